import Testing

@testable import QMPWire

@Suite("QMPJSON echo and QMPBuilder")
struct EchoTests {
    /// Each pair was checked against QEMU 7.2 (see QEMUDifferentialTests for the live check).
    @Test(
        "ids echoed as QEMU 7.2 echoes them",
        arguments: [
            ("'\\u00e9\\ud83d\\ude00/\\'x\"\\u007f'", #""\u00E9\uD83D\uDE00/'x\"\u007F""#),
            (
                #"{"b":1,"a":[1.5,0.1,-0,1e400,18446744073709551615,18446744073709551616,-9223372036854775809,{}, []],"zz":null,"c":true}"#,
                #"{"a": [1.5, 0.10000000000000001, 0, inf, 18446744073709551615, 1.8446744073709552e+19, -9.2233720368547758e+18, {}, []], "zz": null, "b": 1, "c": true}"#
            ),
            ("7", "7"),
            ("\"a\\/b\\u0001\\t\"", #""a/b\u0001\t""#),
            ("'\\u0000'", #""\u0000""#),
        ])
    func echo(_ id: String, _ expected: String) {
        #expect(QMPJSON.echoed(Array(id.utf8)).map { String(decoding: $0, as: UTF8.self) } == expected)
    }

    @Test("builders produce QEMU's member order and one CRLF line")
    func builders() {
        #expect(
            text(
                QMPBuilder.error(
                    class: "CommandNotFound", desc: "The command nope has not been found", id: Array("7".utf8)))
                == "{\"id\": 7, \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command nope has not been found\"}}\r\n"
        )
        #expect(
            text(QMPBuilder.error(class: "GenericError", desc: "x", id: nil))
                == "{\"error\": {\"class\": \"GenericError\", \"desc\": \"x\"}}\r\n")
        #expect(
            text(QMPBuilder.reply(returnValue: .object([]), id: Array("'a'".utf8)))
                == "{\"return\": {}, \"id\": \"a\"}\r\n")
        #expect(
            text(
                QMPBuilder.event(
                    name: "DEVICE_DELETED",
                    data: .object([
                        JSONMember("device", .string("k1")), JSONMember("path", .string("/machine/peripheral/k1")),
                    ]),
                    at: QMPTimestamp(seconds: 1_795_732_918, microseconds: 338_638)))
                == "{\"timestamp\": {\"seconds\": 1795732918, \"microseconds\": 338638}, \"event\": \"DEVICE_DELETED\", \"data\": {\"device\": \"k1\", \"path\": \"/machine/peripheral/k1\"}}\r\n"
        )
        #expect(
            text(QMPBuilder.error(QMPInputError.stray([0x22, 0x61, 0x01])))
                == "{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '\\\"a\\u0001'\"}}\r\n"
        )
        #expect(
            text(QMPBuilder.error(QMPInputError.stray([0xFF])))
                == "{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '\\uFFFD'\"}}\r\n")
    }

    @Test("QDict order: buckets, then the most recent insertion first (QEMU inserts major, minor, micro)")
    func greeting() throws {
        let greeting =
            #"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}"#
        let version: JSONValue = .object([
            JSONMember(
                "qemu",
                .object([
                    JSONMember("major", .integer(7)), JSONMember("minor", .integer(2)),
                    JSONMember("micro", .integer(22)),
                ])),
            JSONMember("package", .string("Debian 1:7.2+dfsg-7+deb12u18+b3")),
        ])
        let value: JSONValue = .object([
            JSONMember(
                "QMP", .object([JSONMember("version", version), JSONMember("capabilities", .array([.string("oob")]))]))
        ])
        #expect(text(QMPBuilder.line(value)) == greeting + "\r\n")
        // Parsed members keep the order they were read in: QEMU's output order is not its insertion order.
        let parsed = try JSONValue(parsing: Array(greeting.utf8))
        #expect(parsed["QMP"]?["version"]?["qemu"]?["micro"] == .integer(22))
    }
}
