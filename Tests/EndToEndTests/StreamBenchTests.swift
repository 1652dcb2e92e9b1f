import Testing
import Foundation
import Glibc

/// `stream-bench --file-to-file`: every contender reads and writes real files on tmpfs, each end
/// of devstream is counted apart (the receiver in a child process), and nothing is left behind.
/// Bytes and behaviour only: the figures themselves live in the README.
@Suite(.serialized) struct StreamBenchTests {
    static var binary: String {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path + "/stream-bench"
    }

    func run(_ args: [String]) throws -> (Int32, [String: Any]?, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.binary)
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        return (p.terminationStatus, try? JSONSerialization.jsonObject(with: o) as? [String: Any], e)
    }

    func leftovers(_ dir: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasPrefix("stream-bench-") }
    }

    @Test(arguments: ["lz4", "none"])
    func fileToFileCountsEachEndAndCleansUp(compression: String) throws {
        let dir = "/dev/shm/ds-sbtest-\(getpid())-\(compression)"
        #expect(mkdir(dir, 0o700) == 0)
        defer { rmdir(dir) }
        let (status, json, stderr) = try run(["--size", "8M", "--repeat", "1", "--file-to-file", "--dir", dir,
                                               "--compression", compression, "--json"])
        #expect(status == 0, "\(stderr)")
        let j = try #require(json)
        #expect(j["file_to_file"] as? Bool == true)
        let send = j["sender_cpu_seconds"] as? Double ?? -1, recv = j["receiver_cpu_seconds"] as? Double ?? -1
        #expect(send > 0 && recv > 0)
        #expect(abs((j["cpu_seconds"] as? Double ?? 0) - (send + recv)) < 0.01)
        for key in ["cpu_seconds_per_gib", "sender_cpu_seconds_per_gib", "receiver_cpu_seconds_per_gib"] {
            #expect((j[key] as? Double ?? -1) > 0, "\(key)")
        }
        // The copy floor of 8 MiB is a few ms of one thread, which the kernel's tick-granular
        // thread accounting may report as 0: present, not negative.
        #expect((j["copy_floor_cpu_seconds_per_gib"] as? Double ?? -1) >= 0)
        let pipes = compression == "lz4" ? ["lz4_nc", "zstd_nc"] : ["nc"]
        for p in pipes {
            #expect((j["\(p)_bytes_per_sec"] as? Double ?? 0) > 0, "\(p)")
            #expect((j["ratio_vs_\(p)"] as? Double ?? 0) > 0, "\(p)")
        }
        let config = try #require(j["config"] as? [String: Any])
        #expect((config["output"] as? String)?.hasPrefix(dir + "/") == true)
        // The input, every output and every .partial are gone.
        #expect(leftovers(dir) == [])
    }
}
