import QMPWire
import Testing

@testable import QMPMock

@Suite("Mock fd passing and faults")
struct MockFaultTests {
    @Test func getfdKeepsOneDescriptorAndClosefdClosesIt() throws {
        var h = try Harness()
        h.negotiate()
        #expect(
            h.execute("getfd", [JSONMember("fdname", .string("f"))], id: 1).first?.contains(
                "No file descriptor supplied via SCM_RIGHTS") == true)
        #expect(
            h.execute("getfd", [JSONMember("fdname", .string("f"))], id: 2, fds: [50, 51]) == [
                #"{"return": {}, "id": 2}"# + "\r\n"
            ])
        #expect(h.host.closed == [51])
        #expect(h.execute("getfd", [JSONMember("fdname", .string("f"))], fds: [52]) == [#"{"return": {}}"# + "\r\n"])
        #expect(h.host.closed == [51, 50])
        #expect(h.execute("closefd", [JSONMember("fdname", .string("f"))]) == [#"{"return": {}}"# + "\r\n"])
        #expect(h.host.closed == [51, 50, 52])
        #expect(
            h.execute("closefd", [JSONMember("fdname", .string("f"))]).first?.contains(
                "File descriptor named 'f' not found")
                == true)
        #expect(
            h.execute("add-fd", [JSONMember("fdset-id", .integer(1))], fds: [60]) == [
                #"{"return": {"fd": 60, "fdset-id": 1}}"# + "\r\n"
            ])
        #expect(h.execute("query-status", fds: [61]).count == 1)
        #expect(h.host.closed.last == 61)
    }

    @Test func slowRepliesKeepOrder() throws {
        var h = try Harness { $0.faults.slowReplies = ["query-version": 0.25] }
        h.negotiate()
        #expect(h.execute("query-version", id: 1).isEmpty)
        #expect(h.execute("query-status", id: 2).isEmpty)
        #expect(h.pendingTimers.map(\.after) == [250_000_000])
        let out = h.fireTimers()
        #expect(out.count == 2)
        #expect(out.first?.hasSuffix("\"id\": 1}\r\n") == true)
        #expect(out.last?.hasSuffix("\"id\": 2}\r\n") == true)
    }

    @Test func dropMidReplyAndExit() throws {
        var h = try Harness {
            $0.faults.dropMidReply = ["query-status"]
            $0.faults.exitOnCommand = ["quit"]
        }
        h.negotiate()
        let out = h.execute("query-status", id: 1)
        #expect(out.count == 1)
        #expect(out.first?.hasSuffix("\r\n") == false)
        #expect(h.lastActions.last == .disconnect(client: h.client))
        _ = h.execute("quit")
        #expect(h.lastActions.last == .exit(status: 3))
    }
}
