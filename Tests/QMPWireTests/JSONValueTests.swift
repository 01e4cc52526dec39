import Testing

@testable import QMPWire

@Suite("JSONValue (jansson)")
struct JSONValueTests {
    func value(_ text: String) throws -> JSONValue { try JSONValue(parsing: Array(text.utf8)) }

    @Test("decodes every kind of value, keeping member order")
    func kinds() throws {
        let v = try value(#"{"z": null, "a": [true, false, -5, 1.25, "s"], "m": {"y": 1, "b": 2}}"#)
        #expect(
            v
                == .object([
                    JSONMember("z", .null),
                    JSONMember("a", .array([.bool(true), .bool(false), .integer(-5), .double(1.25), .string("s")])),
                    JSONMember("m", .object([JSONMember("y", .integer(1)), JSONMember("b", .integer(2))])),
                ]))
        #expect(v["m"]?["b"]?.int64Value == 2)
        #expect(v["a"]?.arrayValue?.count == 5)
    }

    @Test("QEMU's extensions: single quotes, \\', NUL, big integers, overflowing reals")
    func extensions() throws {
        #expect(try value("{'a': 'it\\'s \"q\"'}") == .object([JSONMember("a", .string("it's \"q\""))]))
        #expect(try value(#"["x\'y"]"#) == .array([.string("x'y")]))
        #expect(try value(#""a\u0000b""#) == .string("a\u{0}b"))
        // jansson never holds a NUL in a key; QEMU does (fuzz finding, framer target).
        #expect(
            try value(#"{'\u0000': 1, "a\u0000b": [2]}"#)
                == .object([JSONMember("\u{0}", .integer(1)), JSONMember("a\u{0}b", .array([.integer(2)]))]))
        #expect(try value("[18446744073709551615]") == .array([.unsigned(UInt64.max)]))
        #expect(try value("-9223372036854775809") == .double(-9_223_372_036_854_775_809.0))
        #expect(try value("1e400") == .double(.infinity))
        #expect(try value("'\\u00e9\\uD83D\\uDE00'") == .string("é😀"))
        #expect(try value(#"{"device": "k1", "path": "/machine/peripheral/k1"}"#)["device"]?.stringValue == "k1")
    }

    @Test(
        "rejects what QEMU rejects, with QEMU's text",
        arguments: ["{", "[1,]", "'\\x'", "nul", "{\"a\":1,\"a\":2}", "\"\\uD800\""])
    func rejects(_ input: String) {
        #expect(throws: JSONValueError.self) { try value(input) }
    }

    @Test("a message member as a JSONValue")
    func member() throws {
        let message = try QMPMessage.parse(Array(#"{"event": "DEVICE_DELETED", "data": {"device": "k1"}}"#.utf8)).get()
        #expect(message.jsonValue(.data) == .object([JSONMember("device", .string("k1"))]))
    }

    @Test("QEMU-style serialization round-trips through the parser")
    func roundTrip() throws {
        let inputs = [
            #"{"a": [1, 2.5, "x\n\u00e9"], "b": {"c": null}}"#, "[]", "{}", #""\u0001/\\""#, "18446744073709551615",
        ]
        for input in inputs {
            let v = try value(input)
            #expect(try JSONValue(parsing: v.qemuBytes) == v, "\(input)")
        }
    }
}
