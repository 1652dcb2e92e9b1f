import Foundation
import DSSupport

/// Numbers for people: the one byte, rate and millisecond formatting `devstream` and
/// `stream-bench` print.
package enum Format {
    /// "512 B", "1.50 GiB" (binary units).
    package static func bytes(_ n: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var v = Double(n), i = 0
        while v >= 1024 && i < units.count - 1 { v /= 1024; i += 1 }
        return i == 0 ? "\(n) B" : String(format: "%.2f %@", v, units[i])
    }

    /// "95.37 MiB/s".
    package static func rate(_ bytesPerSecond: Double) -> String {
        bytes(UInt64(max(bytesPerSecond.isFinite ? bytesPerSecond : 0, 0))) + "/s"
    }

    /// Milliseconds with three decimals, for JSON.
    package static func ms(_ d: Duration) -> Double { (d.milliseconds * 1000).rounded() / 1000 }
}
