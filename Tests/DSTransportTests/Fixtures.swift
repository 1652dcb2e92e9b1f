import Synchronization
import DSTestSupport

/// A source file of `n` bytes of seeded test data and an output path beside it (neither made
/// yet), named after `name`: (source path, output path, the data). The caller unlinks both.
func preparedFiles(_ name: String, _ n: Int, seed: UInt64) -> (String, String, [UInt8]) {
    let src = tmpPath("\(name)-src"), out = tmpPath("\(name)-out")
    let data = testData(n, seed: seed)
    writeFile(src, data)
    return (src, out, data)
}

/// The warnings a listener or session printed, collected for the test to read (`sink` is its
/// `warn` closure).
final class Warnings: Sendable {
    let lines = Mutex<[String]>([])
    var all: String { lines.withLock { $0.joined(separator: "\n") } }
    var sink: @Sendable (String) -> Void { { [self] l in lines.withLock { $0.append(l) } } }
    func contains(_ s: String) -> Bool { lines.withLock { $0.contains { $0.contains(s) } } }
}
