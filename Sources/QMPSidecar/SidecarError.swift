/// A failure of the sidecar as a whole; `message` names the fix.
public struct SidecarError: Error, CustomStringConvertible, Sendable {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: Hashable, Sendable {
            case configuration, upstream, upstreamClosed, trace
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// The options do not make sense together.
        public static let configuration = Code(.configuration)
        /// QEMU could not be reached or refused the session.
        public static let upstream = Code(.upstream)
        /// QEMU closed the connection (and `--reconnect` was not given).
        public static let upstreamClosed = Code(.upstreamClosed)
        /// The trace file cannot be written.
        public static let trace = Code(.trace)

        public var description: String { "\(base)" }
    }

    public var code: Code
    public var message: String
    public var location: String

    public init(_ code: Code, _ message: String, fileID: String = #fileID, line: Int = #line) {
        self.code = code
        self.message = message
        self.location = "\(fileID):\(line)"
    }

    public var description: String { message }
}
