import QMPWire
import VFIOTracking

/// Who emits the VFIO group events: the sidecar, or a QEMU that has them itself
/// (contrib/qapi/vfio-group-events.json upstream). Pure rules; ``SidecarCore`` asks QEMU's
/// `query-qmp-schema` once per QMP session, before clients' commands go on.
///
/// When QEMU has `GROUP_RELEASED`, the sidecar steps aside: QEMU's events reach the clients as
/// every event does, the sidecar synthesizes none (no doubled events), still tracks groups for its
/// query command, and says so in its log and in ``queryCommandName``.
public enum GroupEventSource: String, Sendable {
    case sidecar = "qmp-sidecar"
    case qemu

    /// The sidecar's own command saying who emits the events.
    public static let queryCommandName = "__org.qmp-sidecar_query-group-events"

    /// The events of the draft.
    public static let draftEvents: Set<String> = ["GROUP_RELEASED", "GROUP_RELEASE_TIMEOUT"]

    /// `.qemu` when QEMU's introspection (the `return` of `query-qmp-schema`) lists `GROUP_RELEASED`
    /// as an event.
    public static func detect(schema: JSONValue) -> GroupEventSource {
        let native = (schema.arrayValue ?? []).contains { entry in
            entry["meta-type"]?.stringValue == "event" && entry["name"]?.stringValue == "GROUP_RELEASED"
        }
        return native ? .qemu : .sidecar
    }

    /// Whether `line` is one of the sidecar's own group events (under its configured names).
    public static func isSynthesizedGroupEvent(_ line: [UInt8], configuration: VFIOConfiguration) -> Bool {
        var bytes = line
        while let last = bytes.last, last == 0x0A || last == 0x0D { bytes.removeLast() }
        guard case .success(let message) = QMPMessage.parseOutput(bytes), let name = message.string(.event) else {
            return false
        }
        return name == configuration.releasedEventName || name == configuration.timeoutEventName
    }

    /// The answer to ``queryCommandName``.
    public func report(configuration: VFIOConfiguration?) -> JSONValue {
        let released = self == .qemu ? "GROUP_RELEASED" : configuration?.releasedEventName ?? "GROUP_RELEASED"
        let timeout =
            self == .qemu ? "GROUP_RELEASE_TIMEOUT" : configuration?.timeoutEventName ?? "GROUP_RELEASE_TIMEOUT"
        return .object([
            JSONMember("emitted-by", .string(rawValue)),
            JSONMember("released-event", .string(released)),
            JSONMember("timeout-event", .string(timeout)),
        ])
    }
}
