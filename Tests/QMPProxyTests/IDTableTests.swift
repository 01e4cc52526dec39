import Testing

@testable import QMPProxy

/// The router's id table against `Dictionary` as the model: every operation, growth, deletion by
/// backward shift, and sessions checked out while the table changes around them.
@Suite struct IDTableTests {
    @Test(arguments: [1, 2, 3, 4, 5] as [UInt64])
    func agreesWithDictionary(seed: UInt64) {
        var random = Xorshift(seed: seed)
        var table = IDTable<String>()
        var model: [Int: String] = [:]
        var checkedOut: [Int: String?] = [:]
        for step in 0..<20_000 {
            // Keys from a window that moves, as the sidecar's ids do, plus some far apart.
            let key = Int.random(in: 0..<64, using: &random) + step / 40
            switch Int.random(in: 0..<10, using: &random) {
            case 0...3 where checkedOut[key] == nil:
                table[key] = "v\(step)"
                model[key] = "v\(step)"
            case 4...5 where checkedOut[key] == nil:
                #expect(table.removeValue(forKey: key) == model.removeValue(forKey: key))
            case 6 where model[key] != nil && checkedOut[key] == nil:
                checkedOut[key] = table.checkOut(key)
                #expect(checkedOut[key] == model[key])
                #expect(table[key] == nil && table.contains(key) == false && table.count == model.count)
            case 7:
                if let (outKey, value) = checkedOut.first {
                    var back = value
                    table.checkIn(&back, forKey: outKey)
                    #expect(back == nil)
                    checkedOut[outKey] = nil
                }
            default:
                if checkedOut[key] == nil { #expect(table[key] == model[key]) }
            }
        }
        for (key, value) in checkedOut {
            var back = value
            table.checkIn(&back, forKey: key)
        }
        #expect(table.count == model.count)
        #expect(table.sortedKeys == model.keys.sorted())
        for (key, value) in model { #expect(table[key] == value) }
        #expect(Dictionary(uniqueKeysWithValues: table.entries.map { ($0.key, $0.value) }) == model)
    }

    @Test func checkedOutEntrySurvivesGrowthAndRemovalOfItsNeighbours() {
        var table = IDTable<Int>()
        table[1] = 10
        var session = table.checkOut(1)
        for key in 2..<100 { table[key] = key * 10 }  // grows several times while 1 is out
        for key in stride(from: 2, to: 100, by: 2) { table.removeValue(forKey: key) }
        #expect(table.count == 50 && table[1] == nil)
        session! += 1
        table.checkIn(&session, forKey: 1)
        #expect(session == nil && table[1] == 11 && table.count == 50)
        #expect(table.sortedKeys == [1] + Array(stride(from: 3, to: 100, by: 2)))
    }

    @Test func inPlaceMutationAndRead() {
        var table = IDTable<[Int]>()
        table[7] = [1]
        #expect(table.withValue(forKey: 7) { $0.append(2) } != nil)
        #expect(table.withValue(forKey: 8) { $0.append(2) } == nil)
        #expect(table.read(7) { $0.count } == 2 && table.read(8) { $0.count } == nil)
        table.removeAll()
        #expect(table.isEmpty && table[7] == nil)
    }
}
