import QMPWire

/// An error reply QEMU would give: its class and description (id handling is the caller's).
public struct QMPErrorText: Equatable, Sendable {
    public var errorClass: String
    public var desc: String

    public init(_ errorClass: String, _ desc: String) {
        self.errorClass = errorClass
        self.desc = desc
    }

    static func generic(_ desc: String) -> QMPErrorText { QMPErrorText("GenericError", desc) }
}

/// What QEMU 7.2 does with requests the proxy must answer itself, reproduced rule for rule.
///
/// Sources: `qapi/qmp-dispatch.c` (`qmp_dispatch`, `qmp_dispatch_check_obj`), `monitor/qmp.c`
/// (`monitor_qmp_dispatch`'s CommandNotFound rewrite in capabilities mode, `qmp_caps_accept`),
/// `monitor/qmp-cmds-control.c` (`qmp_qmp_capabilities`), and the QAPI input visitor's messages. Every
/// text was checked against a real QEMU 7.2 (see `QEMURequestRulesTests`).
enum QEMURequestRules {
    /// `qmp_dispatch_check_obj`: the members of a request, visited in QDict order.
    ///
    /// - Returns: the error QEMU reports for the first offending member, or nil when the request is
    ///   well-formed.
    static func checkRequest(_ members: [JSONMember], allowOOB: Bool) -> QMPErrorText? {
        QMPDispatchCheck.firstError(members, allowOOB: allowOOB).map(QMPErrorText.generic)
    }

    /// The outcome of one request in capabilities negotiation mode.
    enum NegotiationOutcome: Equatable {
        /// Negotiation succeeded: reply `{"return": {}}`; `oob` tells whether OOB was enabled.
        case negotiated(oob: Bool)
        case error(QMPErrorText)
    }

    /// QEMU's answer to a request (a JSON object) sent before negotiation.
    ///
    /// - Parameters:
    ///   - members: the request's members in parse order.
    ///   - offered: the capabilities in QEMU's greeting.
    static func negotiate(_ members: [JSONMember], offered: [String]) -> NegotiationOutcome {
        // OOB is never allowed before negotiation: `exec-oob` is "unexpected".
        if let error = checkRequest(members, allowOOB: false) {
            return .error(error)
        }
        guard case .string(let command)? = members.first(where: { $0.key == "execute" })?.value,
            command == "qmp_capabilities"
        else {
            return .error(
                QMPErrorText("CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'"))
        }
        let arguments = members.first(where: { $0.key == "arguments" })?.value.objectValue ?? []
        switch QMPDispatchCheck.capabilities(arguments, offered: offered) {
        case .failure(let desc): return .error(.generic(desc))
        case .enabled(let enabled): return .negotiated(oob: enabled.contains("oob"))
        }
    }

    /// QEMU's answer to a request containing `exec-oob` from a client that did not enable OOB (after
    /// negotiation). Such a request never reaches QEMU, whose session with the sidecar has OOB enabled.
    static func rejectWithoutOOB(_ members: [JSONMember]) -> QMPErrorText {
        checkRequest(members, allowOOB: false) ?? .generic("QMP input member 'exec-oob' is unexpected")
    }
}

/// Reply lines the proxy builds itself, byte-identical to QEMU's (``QMPBuilder``).
enum QEMUReply {
    static let crlf: [UInt8] = [0x0D, 0x0A]

    /// `{"id": ID, "error": {"class": C, "desc": D}}\r\n`; `echoedID` is the id as QEMU echoes it.
    static func error(_ error: QMPErrorText, echoedID: [UInt8]?) -> [UInt8] {
        QMPBuilder.error(class: error.errorClass, desc: error.desc, echoedID: echoedID)
    }

    /// `{"return": VALUE, "id": ID}\r\n`; `value` is QEMU-style JSON text.
    static func success(_ value: [UInt8], echoedID: [UInt8]?) -> [UInt8] {
        QMPBuilder.reply(returnValue: .raw(value), echoedID: echoedID)
    }
}
