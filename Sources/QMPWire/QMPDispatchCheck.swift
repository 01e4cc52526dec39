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

    /// What QEMU 7.2 makes of the arguments of `qmp_capabilities`.
    public enum CapabilitiesOutcome: Equatable, Sendable {
        /// Accepted: the capabilities to enable (possibly none).
        case enabled([String])
        /// Rejected with a GenericError carrying this `desc`.
        case failure(String)
    }

    /// Checks the arguments of `qmp_capabilities` as QEMU 7.2 does (`qmp_qmp_capabilities`, the QAPI
    /// input visitor, `qmp_caps_accept`): the `enable` list element by element, then the first
    /// member left over in QDict order, then capabilities the greeting did not offer.
    ///
    /// - Parameters:
    ///   - arguments: the members of `arguments` (empty when absent).
    ///   - offered: the capabilities in the greeting.
    public static func capabilities(_ arguments: [JSONMember], offered: [String]) -> CapabilitiesOutcome {
        var enabled: [String] = []
        if let enable = arguments.first(where: { $0.key == "enable" })?.value {
            guard case .array(let elements) = enable else {
                return .failure("Invalid parameter type for 'enable', expected: array")
            }
            for (index, element) in elements.enumerated() {
                guard case .string(let name) = element else {
                    return .failure("Invalid parameter type for 'enable[\(index)]', expected: string")
                }
                // QMPCapability has one member; QEMU 7.2 names list elements 'null' in this message.
                guard name == "oob" else { return .failure("Parameter 'null' does not accept value '\(name)'") }
                enabled.append(name)
            }
        }
        // visit_check_struct: the first member the visitor did not consume.
        if let unexpected = QMPJSON.qdictOrdered(arguments).first(where: { $0.key != "enable" }) {
            return .failure("Parameter '\(unexpected.key)' is unexpected")
        }
        let unavailable = enabled.filter { !offered.contains($0) }
        if !unavailable.isEmpty {
            return .failure("Capability \(unavailable.joined(separator: ", ")) not available")
        }
        return .enabled(enabled)
    }
}
