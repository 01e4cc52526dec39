/// QEMU 7.2's first check of a request before dispatch (`qmp_dispatch_check_obj` in
/// `qapi/qmp-dispatch.c`), shared by the proxy (requests it answers itself) and the mock.
public enum QMPDispatchCheck {
    /// Visits the members of a request in QDict order as QEMU does.
    ///
    /// - Parameters:
    ///   - members: the request's members in parse (insertion) order.
    ///   - allowOOB: whether `exec-oob` is accepted (the session enabled OOB); otherwise it is
    ///     "unexpected".
    /// - Returns: the `desc` of the GenericError QEMU reports for the first offending member, or nil
    ///   when the request is well-formed.
    public static func firstError(_ members: [JSONMember], allowOOB: Bool) -> String? {
        var execKey: String?
        for member in QMPJSON.qdictOrdered(members) {
            let key = member.key
            if key == "execute" || (key == "exec-oob" && allowOOB) {
                guard case .string = member.value else { return "QMP input member '\(key)' must be a string" }
                if let execKey { return "QMP input member '\(key)' clashes with '\(execKey)'" }
                execKey = key
            } else if key == "arguments" {
                guard case .object = member.value else { return "QMP input member 'arguments' must be an object" }
            } else if key != "id" {
                return "QMP input member '\(key)' is unexpected"
            }
        }
        return execKey == nil ? "QMP input lacks member 'execute'" : nil
    }
}
