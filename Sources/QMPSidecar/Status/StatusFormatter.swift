import QMPWire

#if canImport(Glibc)
import Glibc
#endif

/// What `qmp-sidecar status` prints: the groups as a table, and one line per event with `--watch`.
/// Pure: strings in, strings out.
public enum StatusFormatter {
    /// The groups as an aligned table, one row per group (devices as `name (sysfs)`).
    ///
    /// ```
    /// GROUP  STATE      DEVICES                   DELETED   MEMBERS                    HOLDERS
    /// 7      detaching  hostdev1 (0000:01:00.1)   hostdev0  0000:01:00.0 0000:01:00.1  4242 qemu-system-x86
    /// ```
    public static func table(_ groups: [GroupStatus]) -> String {
        guard !groups.isEmpty else { return "no VFIO groups tracked\n" }
        let header = ["GROUP", "STATE", "DEVICES", "DELETED", "MEMBERS", "HOLDERS"]
        let rows = groups.map { group in
            [
                "\(group.group)",
                group.state,
                list(group.devices.map { "\($0.name) (\($0.sysfs))" }, separator: ", "),
                list(group.deleted, separator: ", "),
                list(group.members, separator: " "),
                list(
                    group.holders.map { "\($0.pid) \($0.comm)" }
                        + (group.hiddenHolders > 0 ? ["\(group.hiddenHolders) of another user"] : []),
                    separator: ", "),
            ]
        }
        let widths = header.indices.map { column in
            ([header] + rows).map { $0[column].count }.max() ?? 0
        }
        var text = ""
        for row in [header] + rows {
            var line = ""
            for (column, cell) in row.enumerated() {
                line += column == row.count - 1 ? cell : cell.padding(to: widths[column] + 2)
            }
            text += line + "\n"
        }
        return text
    }

    /// The line above the table: who emits the group events (`__org.qmp-sidecar_query-group-events`).
    public static func header(_ report: JSONValue) -> String {
        let names = [report["released-event"]?.stringValue, report["timeout-event"]?.stringValue].compactMap { $0 }
        let events = names.isEmpty ? "" : " (\(names.joined(separator: ", ")))"
        switch report["emitted-by"]?.stringValue {
        case "qemu"?: return "group events: emitted by QEMU itself\(events); the sidecar synthesizes none\n"
        case let source?: return "group events: emitted by \(source)\(events)\n"
        case nil: return ""
        }
    }

    /// One event as a line for `--watch`, or nil for events it does not follow. Names match with any
    /// `--event-prefix` (`__com.example_GROUP_RELEASED`).
    ///
    /// - Parameter utc: times in UTC (tests) instead of local time.
    public static func eventLine(_ event: JSONValue, utc: Bool = false) -> String? {
        guard let name = event["event"]?.stringValue else { return nil }
        let data = event["data"]
        let detail: String
        if name == "DEVICE_DELETED" {
            detail = [
                data?["device"]?.stringValue.map { "device=\($0)" }, data?["path"]?.stringValue.map { "path=\($0)" },
            ].compactMap { $0 }.joined(separator: " ")
        } else if name.hasSuffix("GROUP_RELEASED") || name.hasSuffix("GROUP_RELEASE_TIMEOUT") {
            var parts = [
                "group=\(data?["group"]?.int64Value.map(String.init) ?? "?")",
                "devices=\(list((data?["devices"]?.arrayValue ?? []).compactMap(\.stringValue), separator: ","))",
                "waited-ms=\(data?["waited-ms"]?.int64Value.map(String.init) ?? "?")",
            ]
            if let holders = data?["holders"]?.arrayValue {
                let named = holders.map { "\($0["pid"]?.int64Value ?? -1)(\($0["comm"]?.stringValue ?? "?"))" }
                parts.append("holders=\(list(named, separator: ","))")
            }
            detail = parts.joined(separator: " ")
        } else {
            return nil
        }
        let seconds = event["timestamp"]?["seconds"]?.int64Value ?? 0
        let micros = event["timestamp"]?["microseconds"]?.int64Value ?? 0
        return "\(time(seconds: seconds, microseconds: micros, utc: utc))  \(name)  \(detail)"
    }

    /// `2026-12-02 01:02:03.456` from a QMP timestamp.
    public static func time(seconds: Int64, microseconds: Int64, utc: Bool) -> String {
        var clock = time_t(seconds)
        var parts = tm()
        if utc { gmtime_r(&clock, &parts) } else { localtime_r(&clock, &parts) }
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let millis = Int(microseconds / 1000)
        let fraction = millis < 10 ? "00\(millis)" : millis < 100 ? "0\(millis)" : "\(millis)"
        return
            "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday)) \(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)).\(fraction)"
    }

    private static func list(_ items: [String], separator: String) -> String {
        items.isEmpty ? "-" : items.joined(separator: separator)
    }
}

extension String {
    fileprivate func padding(to width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }
}
