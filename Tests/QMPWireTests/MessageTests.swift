import Testing

@testable import QMPWire

func parse(_ text: String) -> Result<QMPMessage, QMPInputError> { QMPMessage.parse(Array(text.utf8)) }

func parseError(_ text: String) -> String? {
    if case .failure(let error) = parse(text) { return error.desc }
    return nil
}

func text(_ bytes: some Sequence<UInt8>) -> String { String(decoding: Array(bytes), as: UTF8.self) }

@Suite("QMPMessage")
struct MessageTests {
    @Test("member ranges of a command")
    func ranges() throws {
        let message = try parse(#"{ "execute" : 'device_add', "arguments":{"id":"x"}, "id": [1, {"a":2}] }"#).get()
        #expect(text(message[.execute]!) == "'device_add'")
        #expect(message.commandName == "device_add")
        #expect(text(message[.arguments]!) == #"{"id":"x"}"#)
        #expect(text(message[.id]!) == #"[1, {"a":2}]"#)
        #expect(message[.event] == nil)
        let event = try parse(#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "X", "data": {}}"#).get()
        #expect(event.string(.event) == "X")
        #expect(text(event[.data]!) == "{}")
        let reply = try parse(#"{"return": 18446744073709551615, "id": 1}"#).get()
        #expect(text(reply[.returnValue]!) == "18446744073709551615")
        #expect(try parse(#"{"QMP": {"version": {}}}"#).get().qmp != nil)
    }

    @Test(
        "QEMU's grammar and its error texts",
        arguments: [
            ("[1]", "QMP input must be a JSON object"),
            ("'x'", "QMP input must be a JSON object"),
            ("}", "JSON parse error, expecting value"),
            (",", "JSON parse error, expecting value"),
            ("{\"a\":1,\"a\":2}", "JSON parse error, duplicate key"),
            ("{\"a\":1,'a':2}", "JSON parse error, duplicate key"),
            ("{1:2}", "JSON parse error, key is not a string in object"),
            ("{\"a\" 1}", "JSON parse error, missing : in object pair"),
            ("{\"a\":1 \"b\":2}", "JSON parse error, expected separator in dict"),
            ("[1 2]", "JSON parse error, expected separator in list"),
            ("{\"a\":}", "JSON parse error, expecting value"),
            ("{\"a\":1,}", "JSON parse error, expecting value"),
            ("[1,]", "JSON parse error, expecting value"),
            ("{\"a\":nul}", "JSON parse error, invalid keyword 'nul'"),
            ("{\"a\":\"\\x\"}", "JSON parse error, invalid escape sequence in string"),
            ("{\"a\":\"\\uD800\"}", "JSON parse error, \\uD800 is not a valid Unicode character"),
            ("{\"a\":\"\\uDC00\"}", "JSON parse error, \\uDC00 is not a valid Unicode character"),
            ("{\"a\":\"\\uD800\\u0041\"}", "JSON parse error, \\uD800 is not a valid Unicode character"),
            ("{\"a\":\"\\uFFFF\"}", "JSON parse error, \\uFFFF is not a valid Unicode character"),
            ("{\"a\":\"\\u12G4\"}", "JSON parse error, \\u12G4 is not a valid Unicode character"),
            ("{\"a\":\"\\u12\"}", "JSON parse error, \\u12\" is not a valid Unicode character"),
            ("{[}]", "JSON parse error, expecting value"),
            ("[}", "JSON parse error, expecting value"),
            ("{\"a\":\"\u{FFFE}\"}", "JSON parse error, invalid UTF-8 sequence in string"),
        ])
    func errors(_ input: String, _ desc: String) {
        #expect(parseError(input) == desc)
    }

    @Test(
        "invalid UTF-8 in strings",
        arguments: [[0xC3], [0xC1, 0x81], [0xE0, 0x80, 0x80], [0x80], [0xED, 0xA0, 0x80]])
    func invalidUTF8(_ bad: [UInt8]) {
        let input = Array(#"{"a":""#.utf8) + bad + Array(#""}"#.utf8)
        guard case .failure(let error) = QMPMessage.parse(input) else {
            Issue.record("accepted")
            return
        }
        #expect(error.desc == "JSON parse error, invalid UTF-8 sequence in string")
    }

    @Test("what QEMU accepts")
    func accepts() {
        for input in [
            "{}", "{'a':'\\''}", "{\"a\":\"\\'\"}", "{\"a\":\"\\u0000\"}", "{\"a\":\"\\uD83D\\uDE00\"}",
            "{\"a\":123456789012345678901234567890}", "{\"a\":-0.0e-5}", "{\"a\":\"\u{C0}\u{80}\"}",
            "{\"a\":[[],{},null,true,false]}",
        ] {
            #expect(parse(input).isSuccess, "\(input)")
        }
        #expect(QMPMessage.parse([0x7B, 0x22, 0x61, 0x22, 0x3A, 0x22, 0xC0, 0x80, 0x22, 0x7D]).isSuccess)
    }

    @Test("decodes single- and double-quoted strings")
    func strings() {
        #expect(QMPMessage.decodeString(Array("'a\\'b\"c'".utf8)) == "a'b\"c")
        #expect(QMPMessage.decodeString(Array("\"\\u00e9\\uD83D\\uDE00\\n\"".utf8)) == "é😀\n")
        #expect(QMPMessage.decodeString(Array("\"\\u0000\"".utf8)) == "\u{0}")
        #expect(QMPMessage.decodeString(Array("12".utf8)) == nil)
    }

    @Test("replacingID replaces, adds and removes at byte level")
    func replacingID() throws {
        func replaced(_ input: String, _ id: String?) throws -> String {
            text(try parse(input).get().replacingID(with: id.map { Array($0.utf8) }))
        }
        #expect(try replaced(#"{"execute":"x", "id" : 'a'}"#, "7") == #"{"execute":"x", "id" : 7}"#)
        #expect(try replaced(#"{"execute":"x", "id" : 'a'}"#, nil) == #"{"execute":"x"}"#)
        #expect(try replaced(#"{ "id":1 , "execute":"x"}"#, nil) == #"{ "execute":"x"}"#)
        #expect(try replaced(#"{ "id":1 }"#, nil) == #"{  }"#)
        #expect(try replaced(#"{"execute":"x"}"#, "\"s1\"") == #"{"execute":"x", "id": "s1"}"#)
        #expect(try replaced(#"{ }"#, "1") == #"{ "id": 1}"#)
        #expect(try replaced(#"{"execute":"x"}"#, nil) == #"{"execute":"x"}"#)
        #expect(
            try replaced(#"{"arguments":{"id":1},"execute":"x","id":2}"#, nil)
                == #"{"arguments":{"id":1},"execute":"x"}"#)
        let again = try parse(try replaced(#"{"a":1,"id":2,"b":3}"#, nil)).get()
        #expect(again.id == nil)
    }

    @Test("duplicate keys past the inline slots and between decoded and plain keys")
    func duplicateKeysEverywhere() {
        let keys = (0..<12).map { "\"k\($0)\":\($0)" }
        #expect(parseError("{" + keys.joined(separator: ",") + "}") == nil, "twelve distinct keys")
        #expect(parseError("{" + keys.joined(separator: ",") + ",\"k0\":0}") == "JSON parse error, duplicate key")
        #expect(parseError("{" + keys.joined(separator: ",") + ",\"k11\":0}") == "JSON parse error, duplicate key")
        #expect(parseError(#"{"a":1,"\u0061":2}"#) == "JSON parse error, duplicate key")
        #expect(parseError(#"{"\u0061":1,"a":2}"#) == "JSON parse error, duplicate key")
        #expect(parseError(#"{"\u00e9":1,"é":2}"#) == "JSON parse error, duplicate key")
        #expect(parseError(#"{"x":{"a":1},"a":{"x":2}}"#) == nil, "keys of different objects")
    }

    @Test("a numeric id spliced in is its decimal digits", arguments: [0, 7, 10, 1234, UInt64.max])
    func numericID(_ number: UInt64) throws {
        for text in [#"{"execute":"x","id":"old"}"#, #"{"execute":"x"}"#, "{}"] {
            let message = try parse(text).get()
            #expect(message.replacingID(with: number) == message.replacingID(with: Array(String(number).utf8)))
        }
    }
}
