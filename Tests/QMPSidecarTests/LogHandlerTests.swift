import CQMPShims
import Logging
import Testing

@testable import QMPSidecar

#if canImport(Glibc)
import Glibc
#endif

@Suite struct LogHandlerTests {
    /// 2026-12-02T01:02:03.456Z
    static let fixed: @Sendable () -> timespec = { timespec(tv_sec: 1_796_173_323, tv_nsec: 456_789_000) }

    @Test func textLineHasTimeLevelLabelMessageAndSortedMetadata() {
        let handler = SidecarLogHandler(label: "qmp-sidecar", format: .text, level: .info, clock: Self.fixed)
        let line = handler.render(level: .info, message: "client connected", metadata: ["pid": "4711", "client": "1"])
        #expect(
            String(decoding: line, as: UTF8.self)
                == "2026-12-02T01:02:03.456Z info qmp-sidecar: client connected client=1 pid=4711")
    }

    @Test func jsonLineIsOneObjectWithMetadataAsMembers() {
        let handler = SidecarLogHandler(label: "qmp-sidecar", format: .json, level: .info, clock: Self.fixed)
        let line = handler.render(
            level: .warning, message: "IOMMU group \"7\" not released",
            metadata: ["group": "7", "holders": .array(["4711(helper)"])])
        #expect(
            String(decoding: line, as: UTF8.self)
                == #"{"time": "2026-12-02T01:02:03.456Z", "level": "warning", "label": "qmp-sidecar", "message": "IOMMU group \"7\" not released", "group": "7", "holders": "[\"4711(helper)\"]"}"#
        )
    }

    @Test func linesGoToTheOutputWithOneWriteEachAndRespectTheLevel() throws {
        var fds: [Int32] = [0, 0]
        #expect(cqmp_pipe(&fds, 0) == 0)
        defer { close(fds[0]) }
        var logger = Logger(label: "t") { label in
            SidecarLogHandler(label: label, format: .text, level: .info, output: fds[1], clock: Self.fixed)
        }
        logger[metadataKey: "component"] = "vfio"
        logger.debug("not shown")
        logger.info("shown", metadata: ["group": "7"])
        close(fds[1])
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = read(fds[0], &buffer, buffer.count)
        #expect(
            String(decoding: buffer[..<max(0, count)], as: UTF8.self)
                == "2026-12-02T01:02:03.456Z info t: shown component=vfio group=7\n")
    }
}
