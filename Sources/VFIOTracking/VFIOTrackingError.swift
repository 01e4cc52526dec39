#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Why VFIO tracking could not resolve or check something.
///
/// A struct with a growable ``Code``: callers match on the code, users read ``description``, which names
/// the fix.
public struct VFIOTrackingError: Error, CustomStringConvertible, Sendable {
    /// The kind of failure.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Hashable, Sendable {
            case deviceNotFound, noIOMMUGroup, notAVFIODevice, outsideRoot, systemCall
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// The device's sysfs directory does not exist under `--sysfs-root`.
        public static let deviceNotFound = Code(.deviceNotFound)
        /// The device has no `iommu_group` link (no IOMMU, or not bound).
        public static let noIOMMUGroup = Code(.noIOMMUGroup)
        /// The `device_add` arguments do not describe a VFIO device.
        public static let notAVFIODevice = Code(.notAVFIODevice)
        /// A path (or a link on it) leads out of `--sysfs-root` / `--dev-root`.
        public static let outsideRoot = Code(.outsideRoot)
        /// A system call failed; see ``VFIOTrackingError/call`` and ``VFIOTrackingError/errno``.
        public static let systemCall = Code(.systemCall)

        public var description: String { base.rawValue }
    }

    /// The kind of failure.
    public var code: Code
    /// What failed and how to fix it.
    public var message: String
    /// The failing system call, if any.
    public var call: String?
    /// The errno of the failing system call, if any.
    public var errno: Int32?
    /// Where the error was made (`#fileID:#line`).
    public var location: String

    init(
        _ code: Code, _ message: String, call: String? = nil, errno: Int32? = nil,
        fileID: String = #fileID, line: Int = #line
    ) {
        self.code = code
        self.message = message
        self.call = call
        self.errno = errno
        self.location = "\(fileID):\(line)"
    }

    public var description: String {
        guard let call, let errno else { return message }
        return "\(message) (\(call): \(String(cString: strerror(errno))), errno \(errno))"
    }
}
