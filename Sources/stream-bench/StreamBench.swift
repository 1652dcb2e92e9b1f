// stream-bench: loopback end-to-end throughput of the DeviceStream data path, with a
// physical-limit baseline (a plain blocking-socket send/recv loop, no compression) measured in
// the same run, and optionally the `lz4 -1 | nc` → `nc | lz4 -d` pipeline on the same file.
import ArgumentParser
import DeviceStream
import DSSimulation
import Foundation
import Glibc
import DSSupport
import DSCLISupport
import DSWire
import DSCodec
import DSRing
import DSTransport
import DSDevices
import DSScheduler

@main
struct StreamBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stream-bench",
        abstract: "Loopback throughput of the devstream data path against a plain-socket baseline.",
        subcommands: [Throughput.self, Generate.self, MigrationSweep.self, StreamTail.self],
        defaultSubcommand: Throughput.self)
}

struct Throughput: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "throughput", abstract: "End-to-end transfer throughput (default).")
    @Option(help: "Bytes of generated data.") var size: String = "256M"
    @Option(help: "Content: mixed (device-memory-like), zero, random, text.") var profile: String = "mixed"
    @Option(help: "TCP connections.") var connections: Int = 2
    @Option(help: "lz4 or none.") var compression: String = "lz4"
    @Option(help: "LZ4 acceleration.") var acceleration: Int = 1
    @Option(help: "Chunk size.") var chunkSize: String = "1M"
    @Option(help: "Seed for the generated data.") var seed: UInt64 = 1
    @Option(name: .customLong("repeat"), help: "Runs of each measurement; medians are reported.") var runs: Int = 3
    @Option(help: "Directory for the generated file.") var dir: String = "/tmp"
    @Option(help: "Receiver output (default /dev/null, so disk speed stays out of the figure).") var output: String = "/dev/null"
    @Flag(help: "Also time `lz4 -1 FILE | nc` → `nc | lz4 -d > OUTPUT` on the same file.") var compareLz4Nc = false
    @Option(help: "psk: run devstream over TLS 1.3 with a random pre-shared key made in this process; none: plaintext, unauthenticated (allowInsecure: the benchmark's own generated data, between its own two ends).") var tls: String = "none"
    @Flag(help: "Measure devstream plaintext and over TLS (PSK) in the same run, and print the ratio.") var compareTls = false
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        guard let prof = ContentProfile(rawValue: profile) else { throw ValidationError("--profile must be mixed, zero, random or text") }
        let bytes = try SizeParsing.parse(size)
        var options = TransferOptions()
        options.connections = connections
        options.compression = compression == "lz4"
        guard compression == "lz4" || compression == "none" else { throw ValidationError("--compression must be lz4 or none") }
        options.acceleration = acceleration
        options.chunkSize = Int(try SizeParsing.parse(chunkSize))
        options.backend = try CLIEnvironment.backend()
        // Plaintext is a deliberate choice here (`--tls none`): generated data between two ends
        // in this process. It is said explicitly, as the library requires.
        options.allowInsecure = true
        try options.validate()
        guard tls == "none" || tls == "psk" else { throw ValidationError("--tls must be psk or none") }
        let secured = Bench.withRandomPSK(options)
        if tls == "psk" && !compareTls { options = secured }

        let path = "\(dir)/stream-bench-\(profile)-\(seed)-\(bytes).img"
        try Bench.generate(path: path, size: bytes, profile: prof, seed: seed)
        defer { unlink(path) }
        Bench.warmPageCache(path)

        var ours: [Bench.Run] = [], base: [Double] = [], pipeline: [Double] = [], encrypted: [Bench.Run] = []
        for _ in 0..<max(1, runs) {
            ours.append(try Bench.transfer(path: path, output: output, options: options))
            if compareTls { encrypted.append(try Bench.transfer(path: path, output: output, options: secured)) }
            base.append(try Bench.baseline(path: path))
            if compareLz4Nc { pipeline.append(try Bench.lz4nc(path: path, output: output)) }
        }
        let mid = Output.median(ours.map { $0.throughput })
        let run = ours.sorted { $0.throughput < $1.throughput }[ours.count / 2]
        let baseMid = Output.median(base)
        var result: [String: Any] = [
            "bytes": bytes, "wire_bytes": run.wireBytes, "elapsed_ms": (run.elapsed * 1000).rounded(),
            "throughput_bytes_per_sec": mid.rounded(), "baseline_bytes_per_sec": baseMid.rounded(),
            "ratio": (mid / baseMid * 1000).rounded() / 1000, "cpu_seconds": (run.cpu * 1000).rounded() / 1000,
            "compression_ratio": run.wireBytes > 0 ? (Double(bytes) / Double(run.wireBytes) * 1000).rounded() / 1000 : 0,
            "runs": ours.count, "io_backend": run.backend.rawValue,
            "config": ["size": bytes, "profile": profile, "connections": connections, "compression": compression,
                       "acceleration": acceleration, "chunk_size": options.chunkSize, "seed": seed, "output": output],
        ]
        let tlsMid = compareTls ? Output.median(encrypted.map { $0.throughput }) : 0
        let tlsRun = compareTls ? encrypted.sorted { $0.throughput < $1.throughput }[encrypted.count / 2] : run
        result["tls"] = compareTls ? "compare" : tls
        if compareTls {
            result["tls_bytes_per_sec"] = tlsMid.rounded()
            result["tls_ratio"] = (tlsMid / mid * 1000).rounded() / 1000
            result["tls_cpu_seconds"] = (tlsRun.cpu * 1000).rounded() / 1000
        }
        if compareLz4Nc {
            let p = Output.median(pipeline)
            result["lz4_nc_bytes_per_sec"] = p.rounded()
            result["ratio_vs_lz4_nc"] = (mid / p * 1000).rounded() / 1000
        }
        if json {
            let data = try JSONSerialization.data(withJSONObject: result, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            let mode = compareTls ? "" : (tls == "psk" ? ", TLS 1.3 PSK" : "")
            print("stream-bench: \(Format.bytes(bytes)) \(profile), \(connections) connections, \(compression)\(mode), \(run.backend.rawValue), median of \(ours.count)")
            print(String(format: "  devstream      %10.1f MiB/s  (wire %.2fx smaller, %.2f CPU s)", mid / 1048576, Double(bytes) / Double(max(run.wireBytes, 1)), run.cpu))
            if compareTls {
                print(String(format: "  devstream+TLS  %10.1f MiB/s  (TLS 1.3 PSK, AES-128-GCM, %.2f CPU s)", tlsMid / 1048576, tlsRun.cpu))
                print(String(format: "  TLS / plain    %10.2fx", tlsMid / mid))
            }
            print(String(format: "  plain socket   %10.1f MiB/s  (baseline, no compression)", baseMid / 1048576))
            print(String(format: "  ratio          %10.2fx", mid / baseMid))
            if compareLz4Nc {
                let p = Output.median(pipeline)
                print(String(format: "  lz4 -1 | nc    %10.1f MiB/s  (devstream is %.2fx)", p / 1048576, mid / p))
            }
        }
    }
}

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Write generated, seeded data to a file or stdout (-).")
    @Option var size: String
    @Option var profile: String = "mixed"
    @Option var seed: UInt64 = 1
    @Argument var output: String
    func run() throws {
        guard let prof = ContentProfile(rawValue: profile) else { throw ValidationError("--profile must be mixed, zero, random or text") }
        try Bench.generate(path: output, size: try SizeParsing.parse(size), profile: prof, seed: seed)
    }
}

enum Bench {
    struct Run { var throughput: Double; var elapsed: Double; var wireBytes: UInt64; var cpu: Double; var backend: IOBackendKind }

    /// Writes `size` bytes of `profile` content (deterministic for `seed`) to `path` (`-`: stdout).
    static func generate(path: String, size: UInt64, profile: ContentProfile, seed: UInt64) throws {
        let fd = path == "-" ? 1 : open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw ValidationError("cannot write \(path): \(String(cString: strerror(errno)))") }
        defer { if fd != 1 { close(fd) } }
        let block = 4 << 20
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: block, alignment: 4096)
        defer { buf.deallocate() }
        var off: UInt64 = 0
        while off < size {
            let n = Int(min(UInt64(block), size - off))
            let b = UnsafeMutableRawBufferPointer(rebasing: buf[0..<n])
            ContentGenerator.fill(b, profile: profile, seed: seed, offset: off)
            var done = 0
            while done < n {
                let w = write(fd, b.baseAddress! + done, n - done)
                guard w > 0 else { throw ValidationError("writing \(path) failed: \(String(cString: strerror(errno)))") }
                done += w
            }
            off += UInt64(n)
        }
    }

    /// `options` over TLS 1.3 with a random pre-shared key made in this process: the benchmark
    /// measures the cipher, not key management.
    static func withRandomPSK(_ options: TransferOptions) -> TransferOptions {
        var rng = SystemRandomNumberGenerator()
        var secured = options
        secured.allowInsecure = false
        secured.security = SecurityOptions(.psk(key: (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }))
        return secured
    }

    static func warmPageCache(_ path: String) {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 1 << 20)
        while buf.withUnsafeMutableBytes({ read(fd, $0.baseAddress, $0.count) }) > 0 {}
    }

    /// devstream's sender and receiver in this process, over loopback.
    static func transfer(path: String, output: String, options: TransferOptions) throws -> Run {
        let receiver = try TransferReceiver(listen: Endpoint(host: "127.0.0.1", port: 0), options: options, warn: { _ in })
        let source = try TransferSource(path: path)
        let cpu0 = Output.cpuSeconds()
        nonisolated(unsafe) var received: TransferReport?
        let t = try OSThread(name: "bench-receive") { received = receiver.receive(output: output, acceptTimeout: .seconds(30)) }
        let sent = TransferSender.send(source, to: receiver.listener.endpoint, options: options, warn: { _ in })
        t.join()
        let cpu = Output.cpuSeconds() - cpu0
        guard sent.completed, let r = received, r.completed else {
            throw ValidationError("transfer failed: \(sent.error?.description ?? received?.error?.description ?? "unknown")")
        }
        let elapsed = max(sent.elapsed.seconds, r.elapsed.seconds)
        return Run(throughput: Double(sent.bytes) / elapsed, elapsed: elapsed, wireBytes: sent.wireBytes, cpu: cpu, backend: sent.backend)
    }

    /// The physical-limit baseline: the same bytes (from memory, as the page cache serves the
    /// file) through one plain blocking TCP socket over loopback, no compression, no checksums.
    static func baseline(path: String) throws -> Double {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw ValidationError("cannot open \(path)") }
        var st = stat(); fstat(fd, &st)
        let size = Int(st.st_size)
        let chunk = 1 << 20
        let (lfd, port) = try Sockets.listen(Endpoint(host: "127.0.0.1", port: 0))
        defer { close(lfd) }
        nonisolated(unsafe) var got = 0
        let reader = try OSThread(name: "bench-baseline") {
            let c = accept(lfd, nil, nil)
            let buf = UnsafeMutableRawPointer.allocate(byteCount: chunk, alignment: 4096)
            while true {
                let n = recv(c, buf, chunk, 0)
                if n <= 0 { break }
                got += n
            }
            buf.deallocate(); close(c)
        }
        let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        _ = connectLoopback(s, port: port)
        let buf = UnsafeMutableRawPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buf.deallocate() }
        let t0 = Monotonic.now
        var off = 0
        while off < size {
            let n = pread(fd, buf, min(chunk, size - off), off_t(off))
            guard n > 0 else { break }
            var done = 0
            while done < n { let w = send(s, buf + done, n - done, 0); guard w > 0 else { break }; done += w }
            off += n
        }
        close(s)
        reader.join()
        close(fd)
        let dt = (Monotonic.now - t0).seconds
        guard got == size else { throw ValidationError("baseline moved \(got) of \(size) bytes") }
        return Double(size) / dt
    }

    /// Connects the TCP socket `s` to 127.0.0.1:`port` (blocking); returns `connect`'s result.
    static func connectLoopback(_ s: Int32, port: UInt16) -> Int32 {
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET); addr.sin_port = port.bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    }

    /// `lz4 -1 -c FILE | nc HOST PORT` into `nc -l PORT | lz4 -d -c > OUTPUT`, timed end to end.
    static func lz4nc(path: String, output: String) throws -> Double {
        var st = stat(); stat(path, &st)
        let port = 20000 + Int(getpid() % 20000)
        let script = """
        nc -l 127.0.0.1 \(port) | lz4 -d -c > \(output) & R=$!
        sleep 0.3
        lz4 -1 -c '\(path)' | nc -N 127.0.0.1 \(port)
        wait $R
        """
        let t0 = Monotonic.now
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", script]
        try p.run()
        p.waitUntilExit()
        let dt = (Monotonic.now - t0).seconds - 0.3
        guard p.terminationStatus == 0 else { throw ValidationError("the lz4 | nc pipeline failed (are lz4 and netcat-openbsd installed?)") }
        return Double(st.st_size) / dt
    }
}
