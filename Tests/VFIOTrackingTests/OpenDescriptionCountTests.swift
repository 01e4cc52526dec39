import Testing
import VFIOTracking

/// The counting rules of ``OpenDescriptionCount``: inotify's opens and last closes, no I/O.
@Suite struct OpenDescriptionCountTests {
    @Test func watchedBeforeUseCountsOpensAndLastCloses() {
        var count = OpenDescriptionCount(watchedBeforeUse: true, exclusive: false)
        #expect(count.isOpen == false)
        count.opened()
        count.opened()
        #expect(count.knowledge == .exact(2))
        count.closed()
        #expect(count.isOpen == true)
        count.closed()
        #expect(count.knowledge == .exact(0))
        // A stray close (an open before the watch, on a non-exclusive node) never goes below zero.
        count.closed()
        #expect(count.knowledge == .exact(0))
    }

    @Test func watchedAfterUseIsUnknownUntilVerified() {
        var count = OpenDescriptionCount(watchedBeforeUse: false, exclusive: false)
        #expect(count.isOpen == nil)
        count.opened()
        count.closed()
        #expect(count.isOpen == nil, "a close of one description says nothing about others opened before")
        count.verified(held: true)
        #expect(count.isOpen == nil, "a scan sees fds; several may share one description")
        count.verified(held: false)
        #expect(count.knowledge == .exact(0))
    }

    @Test func anExclusiveNodeIsKnownFromItsCloseOrAHolder() {
        // A legacy group node opens once (EBUSY): its close event is its only description going.
        var count = OpenDescriptionCount(watchedBeforeUse: false, exclusive: true)
        count.closed()
        #expect(count.knowledge == .exact(0))
        count.opened()
        count.opened()  // cannot happen twice; the count stays at one
        #expect(count.knowledge == .exact(1))
        count.eventsLost()
        count.verified(held: true)
        #expect(count.knowledge == .exact(1))
    }

    @Test func lostEventsMakeTheCountUnknown() {
        var count = OpenDescriptionCount(watchedBeforeUse: true, exclusive: false)
        count.opened()
        count.eventsLost()
        #expect(count.isOpen == nil)
        count.closed()
        #expect(count.isOpen == nil)
    }

    @Test func aSuccessWithoutASeenOpenMeansOpenedBeforeTheWatch() {
        var unseen = OpenDescriptionCount(watchedBeforeUse: true, exclusive: false)
        unseen.openedBeforeWatch()
        #expect(unseen.isOpen == nil)
        var seen = OpenDescriptionCount(watchedBeforeUse: true, exclusive: false)
        seen.opened()
        seen.openedBeforeWatch()
        #expect(seen.knowledge == .exact(1))
    }
}
