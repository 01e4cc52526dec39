import Testing

@testable import QMPWire

@Suite("QMPDispatchCheck")
struct DispatchCheckTests {
    private func members(_ pairs: [(String, JSONValue)]) -> [JSONMember] { pairs.map { JSONMember($0.0, $0.1) } }

    /// Texts and precedence recorded from QEMU 7.2 (`qmp_dispatch_check_obj`, members in QDict order).
    @Test func firstOffendingMemberInQDictOrder() {
        let clash = members([("exec-oob", .string("a")), ("execute", .string("a")), ("zz", .integer(1))])
        #expect(
            QMPDispatchCheck.firstError(clash, allowOOB: true) == "QMP input member 'execute' clashes with 'exec-oob'")
        #expect(QMPDispatchCheck.firstError(clash, allowOOB: false) == "QMP input member 'exec-oob' is unexpected")
        #expect(QMPDispatchCheck.firstError([], allowOOB: true) == "QMP input lacks member 'execute'")
        #expect(
            QMPDispatchCheck.firstError(members([("execute", .integer(1))]), allowOOB: false)
                == "QMP input member 'execute' must be a string")
        #expect(
            QMPDispatchCheck.firstError(
                members([("execute", .string("a")), ("arguments", .array([]))]), allowOOB: false)
                == "QMP input member 'arguments' must be an object")
        #expect(
            QMPDispatchCheck.firstError(
                members([("execute", .string("a")), ("arguments", .object([])), ("id", .null)]), allowOOB: false) == nil
        )
    }
}
