import Glibc
import QMPTestKit
import QMPWire
import Testing

/// The same inputs to real QEMU 7.2 and to qmp-mock: the replies must be byte-identical (timestamps aside).
@Suite("qmp-mock against real QEMU")
struct MockDifferentialTests {
    /// Inputs sent before negotiation, in order (the last one negotiates).
    static let beforeNegotiation = [
        #"{"execute":"query-status"}"#,
        #"{"execute":"query-status","id":1}"#,
        #"[1]"#,
        #"{}"#,
        #"{"execute":1}"#,
        #"{"execute":"query-status","arguments":[]}"#,
        #"{"execute":"query-status","foo":1}"#,
        #"{"execute":"query-status","exec-oob":"query-status"}"#,
        #"{"exec-oob":"qmp_capabilities","id":1}"#,
        #"{"execute":"qmp_capabilities","arguments":{"enable":["foo"]},"id":2}"#,
        #"{"execute":"qmp_capabilities","arguments":{"foo":1},"id":3}"#,
        #"{"execute":"qmp_capabilities","arguments":{"enable":"oob"},"id":4}"#,
        #"{'execute':'qmp_capabilities','id':'a\'b'}"#,
    ]

    /// Inputs after negotiation without OOB.
    static let afterNegotiation = [
        #"{"execute":"qmp_capabilities","id":"x"}"#,
        #"{"exec-oob":"query-status","id":1}"#,
        #"{"execute":"query-status","id":{"b":1,"a":[1,2.5,"é"]}}"#,
        #"{"execute":"query-status","arguments":{"x":1},"id":2}"#,
        #"{"execute":"nosuch","id":3}"#,
        #"{"execute":"query-version"}"#,
        #"{"execute":"device_add","id":4}"#,
        #"{"execute":"device_add","arguments":{"driver":"nosuchdev"},"id":5}"#,
        #"{"execute":"device_add","arguments":{"driver":"usb-kbd","id":"kb0"},"id":6}"#,
        #"{"execute":"device_add","arguments":{"driver":"usb-kbd","id":"kb0"},"id":7}"#,
        #"{"execute":"qom-list","arguments":{"path":"/machine/peripheral"},"id":8}"#,
        #"{"execute":"qom-get","arguments":{"path":"/machine/peripheral/kb0","property":"type"},"id":9}"#,
        #"{"execute":"qom-get","arguments":{"path":"kb0","property":"type"},"id":10}"#,
        #"{"execute":"qom-get","arguments":{"path":"/machine/peripheral/nokb","property":"type"},"id":11}"#,
        #"{"execute":"qom-get","arguments":{"path":"/machine/peripheral/kb0","property":"nope"},"id":12}"#,
        #"{"execute":"qom-get","arguments":{"path":"/machine/peripheral","property":"type"},"id":13}"#,
        #"{"execute":"qom-list","arguments":{"path":"/nope"},"id":14}"#,
        #"{"execute":"device_del","arguments":{"id":"nope"},"id":15}"#,
        #"{"execute":"device_del","id":16}"#,
        #"{"execute":"getfd","arguments":{"fdname":"f"},"id":17}"#,
        #"{"execute":"closefd","arguments":{"fdname":"f"},"id":18}"#,
        #"{"execute":"add-fd","id":19}"#,
        #"{"execute":"device_del","arguments":{"id":"kb0"},"id":20}"#,
        #"{"execute":"device_del","arguments":{"id":"kb0"},"id":21}"#,
        #"{"execute":"device_add","arguments":{"driver":"usb-kbd"},"id":22}"#,
        #"{"execute":"qom-list","arguments":{"path":"/machine/peripheral-anon"},"id":23}"#,
        #"{"execute":"stop","id":24}"#,
        #"{"execute":"cont","id":25}"#,
        #"{"execute":"query-status","id":26}"#,
        #"{"execute":"stop","id":27}"#,
        #"{"execute":"query-status","id":28}"#,
        #"{"execute":"query-status","id":'single \' quote'}"#,
        #"{"execute":"query-status","id":18446744073709551616}"#,
        #"{"execute":"query-status","id":"\u00e9\ud83d\ude00\t"}"#,
        #"{"execute": x}"#,
        #"}"#,
        #"{"execute":"device_add","arguments":{"driver":"usb-kbd","id":"1bad"},"id":29}"#,
        #"{"execute":"device_add","arguments":{"driver":"usb-kbd","id":7},"id":30}"#,
        #"{"execute":"qom-list","id":31}"#,
        #"{"execute":"qom-get","arguments":{"path":1,"property":"type"},"id":32}"#,
        #"{"execute":"getfd","arguments":{"fdname":"9x"},"id":33}"#,
        #"{"execute":"remove-fd","arguments":{"fdset-id":77},"id":34}"#,
    ]

    /// Inputs on a second connection that negotiates OOB.
    static let withOOB = [
        #"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]},"id":1}"#,
        #"{"exec-oob":"query-status","id":2}"#,
        #"{"exec-oob":"nosuch","id":3}"#,
        #"{"execute":"query-status","exec-oob":"query-status","id":4}"#,
    ]

    /// A marker command whose reply ends the output of the input before it: QEMU answers in order.
    static let marker = #"{"execute":"query-commandz","id":"sync"}"#

    /// Sends each input followed by the marker; returns the replies each input produced, and the
    /// events seen meanwhile (QEMU sends DEVICE_DELETED from finalize, after RCU: it may come after
    /// the next command's reply, so events are compared as one list, not per input).
    static func transcript(_ client: MockTestClient, _ inputs: [String]) throws -> (
        replies: [[String]], events: [String]
    ) {
        var replies: [[String]] = []
        var events: [String] = []
        for input in inputs {
            try client.send(input + "\n")
            try client.send(marker)
            var lines = try client.readUntil(#""id": "sync""#).map(normalized)
            lines.removeLast()
            events += lines.filter { $0.hasPrefix(#"{"timestamp""#) }
            replies.append(lines.filter { !$0.hasPrefix(#"{"timestamp""#) })
        }
        return (replies, events)
    }

    /// Reads events until `count` have been seen in `events` (bounded wait).
    static func awaitEvents(_ client: MockTestClient, _ events: inout [String], count: Int) throws {
        while events.count < count, let line = try client.readLine(timeout: 5) {
            events.append(normalized(line))
        }
    }

    /// Timestamps differ between runs: replace their digits.
    static func normalized(_ line: String) -> String {
        let prefix = #"{"timestamp": {"#
        guard line.hasPrefix(prefix), let end = line.firstIndex(of: "}") else { return line }
        return #"{"timestamp": {T}"# + String(line[line.index(after: end)...])
    }

    @Test(.enabled(if: QEMULauncher.shouldRun, "QEMU 7.2 not installed (set QMP_SIDECAR_REQUIRE_QEMU to fail instead)"))
    func repliesAreIdenticalToQEMU() throws {
        let qemu = try QEMULauncher()
        defer { qemu.terminate() }
        let real = try MockTestClient(path: qemu.socketPath)
        // Start the mock with QEMU's own version and package so the greetings compare too.
        let greeting = try JSONValue(parsing: Array(real.greeting.utf8))
        let version = try #require(greeting["QMP"]?["version"])
        let qemuTriple = try #require(version["qemu"])
        let versionText = [qemuTriple["major"], qemuTriple["minor"], qemuTriple["micro"]]
            .map { String($0?.int64Value ?? -1) }.joined(separator: ".")
        let mock = try MockInstance([
            "--qemu-version", versionText, "--qemu-package", version["package"]?.stringValue ?? "",
        ])
        let fake = try mock.connect()
        #expect(fake.greeting == real.greeting)

        let realBefore = try Self.transcript(real, Self.beforeNegotiation)
        let fakeBefore = try Self.transcript(fake, Self.beforeNegotiation)
        for (index, input) in Self.beforeNegotiation.enumerated() {
            #expect(fakeBefore.replies[index] == realBefore.replies[index], "input: \(input)")
        }
        #expect(realBefore.events.isEmpty && fakeBefore.events.isEmpty, "no events before negotiation")
        let realAfter = try Self.transcript(real, Self.afterNegotiation)
        var fakeAfter = try Self.transcript(fake, Self.afterNegotiation)
        for (index, input) in Self.afterNegotiation.enumerated() {
            #expect(fakeAfter.replies[index] == realAfter.replies[index], "input: \(input)")
        }
        // The device_del of kb0 produced DEVICE_DELETED, and cont/stop RESUME and STOP, on both.
        var realEvents = realAfter.events
        try Self.awaitEvents(real, &realEvents, count: 3)
        try Self.awaitEvents(fake, &fakeAfter.events, count: 3)
        #expect(realEvents.sorted() == fakeAfter.events.sorted())
        #expect(realEvents.contains { $0.contains("DEVICE_DELETED") })

        // getfd with a descriptor over SCM_RIGHTS, then closefd.
        let devNull = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { _ = Glibc.close(devNull) }
        for client in [real, fake] {
            #expect(
                try client.execute(#"{"execute":"getfd","arguments":{"fdname":"n"},"id":"g"}"#, fds: [devNull]) == [
                    #"{"return": {}, "id": "g"}"#
                ])
            #expect(try client.execute(#"{"execute":"closefd","arguments":{"fdname":"n"}}"#) == [#"{"return": {}}"#])
        }

        // A second connection negotiating OOB (QEMU serves one monitor connection at a time).
        real.close()
        fake.close()
        let realOOB = try MockTestClient(path: qemu.socketPath)
        let fakeOOB = try mock.connect()
        let realOOBLines = try Self.transcript(realOOB, Self.withOOB)
        let fakeOOBLines = try Self.transcript(fakeOOB, Self.withOOB)
        for (index, input) in Self.withOOB.enumerated() {
            #expect(fakeOOBLines.replies[index] == realOOBLines.replies[index], "input: \(input)")
        }

        // quit: SHUTDOWN, the reply, then the connection ends.
        for client in [realOOB, fakeOOB] {
            try client.send(#"{"execute":"quit","id":"q"}"#)
            #expect(
                try Self.normalized(client.readLine() ?? "")
                    == #"{"timestamp": {T}, "event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}}"#)
            #expect(try client.readLine() == #"{"return": {}, "id": "q"}"#)
            #expect(try client.readLine(timeout: 10) == nil)
        }
        #expect(mock.process.waitForExit() == 0)
    }
}
