extension UInt8 {
    /// Whether the byte is JSON whitespace as QEMU's lexer skips it: space, tab, CR, LF.
    @inline(__always)
    var isJSONWhitespace: Bool { self == 0x20 || self == 0x09 || self == 0x0D || self == 0x0A }
}
