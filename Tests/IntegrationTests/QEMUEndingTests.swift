import QMPSidecar
import Testing

@Suite struct QEMUEndingTests {
    private func shutdown(_ reason: String) -> [UInt8] {
        Array(
            #"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "SHUTDOWN", "data": {"guest": true, "reason": "\#(reason)"}}"#
                .utf8)
    }

    @Test func shutdownEventMakesTheEndNormal() {
        var ending = QEMUEnding()
        ending.sessionStarted()
        #expect(ending.verdict() == .unexpected)
        ending.eventReceived(name: "STOP", line: Array(#"{"event": "STOP"}"#.utf8))
        #expect(ending.verdict() == .unexpected)
        ending.eventReceived(name: "SHUTDOWN", line: shutdown("guest-shutdown"))
        #expect(ending.verdict() == .normal(reason: "guest-shutdown"))
        #expect(ending.verdict(exitStatus: 1) == .normal(reason: "guest-shutdown"))
    }

    @Test func aNewSessionForgetsTheLastShutdown() {
        var ending = QEMUEnding()
        ending.eventReceived(name: "SHUTDOWN", line: shutdown("host-qmp-quit"))
        ending.sessionStarted()
        #expect(ending.verdict() == .unexpected)
    }

    @Test func exitStatusDecidesWithoutShutdown() {
        let ending = QEMUEnding()
        #expect(ending.verdict(exitStatus: 0) == .normal(reason: "exit status 0"))
        #expect(ending.verdict(exitStatus: 137) == .unexpected)
        #expect(ending.verdict(exitStatus: nil) == .unexpected)
    }

    @Test func shutdownWithoutReasonFromOldQEMU() {
        var ending = QEMUEnding()
        ending.eventReceived(name: "SHUTDOWN", line: Array(#"{"event": "SHUTDOWN", "timestamp": {}}"#.utf8))
        #expect(ending.verdict() == .normal(reason: "unknown"))
    }
}
