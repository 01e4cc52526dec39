#if canImport(Glibc)
import Glibc
#endif

/// An error of the I/O runtime: a failed system call, a bad address, a socket that cannot be used.
///
/// `code` says what went wrong; `call` and `errno` are set for system-call failures; `description`
/// is a user-facing sentence that names the fix where there is one.
public struct RuntimeError: Error, CustomStringConvertible, Sendable {
    /// What kind of failure this is. Compare against the static members (`.systemCall`, ...).
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: Hashable, Sendable {
            case systemCall, invalidAddress, addressInUse, notAListeningSocket, notASocket
            case timedOut, socketActivation, takeOver, closed, pathTooLong
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// A system call failed; `call` and `errno` say which and why.
        public static let systemCall = Code(.systemCall)
        /// An address string could not be parsed (`unix:PATH`, `tcp:HOST:PORT`).
        public static let invalidAddress = Code(.invalidAddress)
        /// A live process already listens at the requested path.
        public static let addressInUse = Code(.addressInUse)
        /// An inherited descriptor is not a listening stream socket.
        public static let notAListeningSocket = Code(.notAListeningSocket)
        /// A path exists but is not a unix socket.
        public static let notASocket = Code(.notASocket)
        /// A deadline passed (e.g. connecting to an upstream that never started listening).
        public static let timedOut = Code(.timedOut)
        /// `LISTEN_FDS`/`LISTEN_PID` are inconsistent or absent.
        public static let socketActivation = Code(.socketActivation)
        /// Taking over a listening path failed.
        public static let takeOver = Code(.takeOver)
        /// The object was already closed.
        public static let closed = Code(.closed)
        /// A unix socket path does not fit in `sun_path` (107 bytes).
        public static let pathTooLong = Code(.pathTooLong)

        public var description: String { "\(base)" }
    }

    /// What kind of failure this is.
    public var code: Code
    /// The failed system call, if any (`"connect"`, `"bind"`, ...).
    public var call: String?
    /// The errno of the failed system call, if any.
    public var errno: Int32?
    /// A sentence for humans; names the fix where there is one.
    public var message: String
    /// Where the error was created.
    public var location: String

    /// Creates an error.
    public init(
        code: Code, message: String, call: String? = nil, errno: Int32? = nil,
        fileID: String = #fileID, line: Int = #line
    ) {
        self.code = code
        self.message = message
        self.call = call
        self.errno = errno
        self.location = "\(fileID):\(line)"
    }

    /// A failed system call: captures the current `errno` unless one is given.
    public static func systemCall(
        _ call: String, errno: Int32? = nil, context: String = "",
        fileID: String = #fileID, line: Int = #line
    ) -> RuntimeError {
        let err = errno ?? Glibc.errno
        let text = String(cString: strerror(err))
        let msg = context.isEmpty ? "\(call) failed: \(text)" : "\(context): \(call) failed: \(text)"
        return RuntimeError(code: .systemCall, message: msg, call: call, errno: err, fileID: fileID, line: line)
    }

    public var description: String { message }
}
