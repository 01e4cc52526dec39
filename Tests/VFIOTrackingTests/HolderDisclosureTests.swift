import Testing
import VFIOTracking

@Suite("HolderDisclosure: a client is told only the holders it could see in /proc")
struct HolderDisclosureTests {
    /// (pid, owner uid) of three holders: QEMU as 107, a root helper, one of unknown owner.
    let holders: [(pid: Int, owner: UInt32?)] = [(100, 107), (200, 0), (300, nil)]

    @Test func rootSeesEveryHolder() {
        let (shown, hidden) = HolderDisclosure(viewer: 0).split(holders) { $0.owner }
        #expect(shown.map(\.pid) == [100, 200, 300])
        #expect(hidden == 0)
    }

    @Test func aUserSeesOnlyItsOwnProcesses() {
        let (shown, hidden) = HolderDisclosure(viewer: 107).split(holders) { $0.owner }
        #expect(shown.map(\.pid) == [100])
        #expect(hidden == 2)
    }

    @Test func anotherUserSeesNoneButTheCount() {
        let (shown, hidden) = HolderDisclosure(viewer: 1000).split(holders) { $0.owner }
        #expect(shown.isEmpty)
        #expect(hidden == 3)
    }

    @Test func aPeerWithoutCredentialsSeesNone() {
        let disclosure = HolderDisclosure(viewer: nil)
        #expect(!disclosure.mayName(owner: 0))
        #expect(!disclosure.mayName(owner: nil))
        #expect(disclosure.split(holders) { $0.owner }.hidden == 3)
    }

    @Test func theOperatorsLogNamesEveryone() {
        #expect(HolderDisclosure.operatorView.split(holders) { $0.owner }.hidden == 0)
    }
}
