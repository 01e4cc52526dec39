/// Order statistics of one sample set: the single percentile rule every benchmark reports with.
struct Percentiles {
    /// The samples, ascending.
    let sorted: [Double]

    init(_ samples: [Double]) {
        sorted = samples.sorted()
    }

    /// Nearest rank: the smallest sample with at least fraction `q` of all samples at or below it
    /// (NaN for an empty set).
    func at(_ q: Double) -> Double {
        guard !sorted.isEmpty else { return .nan }
        let rank = Int((q * Double(sorted.count)).rounded(.up))
        return sorted[Swift.min(sorted.count - 1, Swift.max(0, rank - 1))]
    }

    var p50: Double { at(0.50) }
    var p90: Double { at(0.90) }
    var p99: Double { at(0.99) }
    var max: Double { sorted.last ?? .nan }
    var mean: Double { sorted.isEmpty ? .nan : sorted.reduce(0, +) / Double(sorted.count) }
}
