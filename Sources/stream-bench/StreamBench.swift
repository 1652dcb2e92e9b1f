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
        subcommands: [Throughput.self, Generate.self, MigrationSweep.self, StreamTail.self, ReceiveChild.self],
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
    @Option(help: "Directory for the generated file (default /tmp; /dev/shm with --file-to-file).") var dir: String?
    @Option(help: "Receiver output (default /dev/null, so disk speed stays out of the figure; with --file-to-file a file in --dir). A regular file here is removed after each run.") var output: String?
    @Flag(help: "File to file: read the generated file from --dir (default /dev/shm, tmpfs) and write a real file there, for devstream and every pipeline; compares the lz4 and zstd pipelines (lz4) or nc alone (--compression none).") var fileToFile = false
    @Flag(help: "Also time `lz4 -1 FILE | nc` → `nc | lz4 -d > OUTPUT` on the same file.") var compareLz4Nc = false
    @Flag(help: "Also time `zstd --fast=3 -T2 FILE | nc` → `nc | zstd -d > OUTPUT` on the same file.") var compareZstdNc = false
    @Flag(help: "Also time `nc < FILE` → `nc > OUTPUT` (the raw-mode peer) on the same file.") var compareNc = false
    @Option(help: "psk: run devstream over TLS 1.3 with a random pre-shared key made in this process; none: plaintext, unauthenticated (allowInsecure: the benchmark's own generated data, between its own two ends).") var tls: String = "none"
    @Flag(help: "Measure devstream plaintext and over TLS (PSK) in the same run, and print the ratio.") var compareTls = false
    @Flag(help: "Before each timed run (devstream, the copy floor, every pipeline), fault in and free anonymous memory of the data's size plus a quarter, so that the run's fresh output pages come from guest memory the hypervisor still backs. On a VM with free page reporting (virtio-balloon; `page_reporting` on the kernel command line) free memory goes back to the host after a few seconds, and the first touch of such a page costs a host fault: see the README's CPU section.") var warmPages = false
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

        let dir = self.dir ?? (fileToFile ? "/dev/shm" : "/tmp")
        let path = "\(dir)/stream-bench-\(profile)-\(seed)-\(bytes).img"
        // File to file: every end writes a real file next to the input, removed after each run.
        let output = self.output ?? (fileToFile ? "\(dir)/stream-bench-\(getpid())-out.img" : "/dev/null")
        let fileOutput = Bench.isRegularFileTarget(output)
        let pipelines: [Bench.Pipeline] = [
            compareLz4Nc || (fileToFile && options.compression) ? .lz4 : nil,
            compareZstdNc || (fileToFile && options.compression) ? .zstd : nil,
            compareNc || (fileToFile && !options.compression) ? .nc : nil,
        ].compactMap { $0 }
        try Bench.generate(path: path, size: bytes, profile: prof, seed: seed)
        defer { unlink(path) }
        Bench.warmPageCache(path)

        // Every measurement of a round runs back to back, so each ratio compares runs made under
        // the same load (this machine is shared and noisy); medians are taken per measurement
        // and the ratios are the medians of the per-round (paired) ratios.
        var ours: [Bench.Run] = [], base: [Double] = [], encrypted: [Bench.Run] = [], floor: [Double] = []
        var piped = [Bench.Pipeline: [Bench.PipeRun]]()
        let warm = { if warmPages { Bench.warmFreeMemory(bytes + bytes / 4) } }
        for _ in 0..<max(1, runs) {
            warm()
            ours.append(try Bench.transfer(path: path, output: output, options: options))
            if fileOutput { Bench.removeOutput(output) }
            if compareTls {
                warm()
                encrypted.append(try Bench.transfer(path: path, output: output, options: secured))
            }
            if fileOutput { Bench.removeOutput(output) }
            base.append(try Bench.baseline(path: path))
            if fileOutput {
                warm()
                floor.append(try Bench.copyFloor(path: path, output: output))
                Bench.removeOutput(output)
            }
            for p in pipelines {
                warm()
                piped[p, default: []].append(try Bench.pipeline(p, path: path, output: output))
                if fileOutput { Bench.removeOutput(output) }
            }
        }
        let mid = Output.median(ours.map { $0.throughput })
        let run = ours.sorted { $0.throughput < $1.throughput }[ours.count / 2]
        let baseMid = Output.median(base)
        let gib = Double(bytes) / Double(1 << 30)
        func perGiB(_ seconds: Double) -> Double { (seconds / gib * 1000).rounded() / 1000 }
        let sendCPU = Output.median(ours.map { $0.senderCPU }), recvCPU = Output.median(ours.map { $0.receiverCPU })
        let bothCPU = Output.median(ours.map { $0.cpu })
        var result: [String: Any] = [
            "bytes": bytes, "wire_bytes": run.wireBytes, "elapsed_ms": (run.elapsed * 1000).rounded(),
            "throughput_bytes_per_sec": mid.rounded(), "baseline_bytes_per_sec": baseMid.rounded(),
            "ratio": (mid / baseMid * 1000).rounded() / 1000, "cpu_seconds": (bothCPU * 1000).rounded() / 1000,
            "sender_cpu_seconds": (sendCPU * 1000).rounded() / 1000, "receiver_cpu_seconds": (recvCPU * 1000).rounded() / 1000,
            "cpu_seconds_per_gib": perGiB(bothCPU), "sender_cpu_seconds_per_gib": perGiB(sendCPU),
            "receiver_cpu_seconds_per_gib": perGiB(recvCPU),
            "compression_ratio": run.wireBytes > 0 ? (Double(bytes) / Double(run.wireBytes) * 1000).rounded() / 1000 : 0,
            "runs": ours.count, "io_backend": run.backend.rawValue, "file_to_file": fileToFile, "warm_pages": warmPages,
            "config": ["size": bytes, "profile": profile, "connections": connections, "compression": compression,
                       "acceleration": acceleration, "chunk_size": options.chunkSize, "seed": seed, "output": output,
                       "input": path],
        ]
        let floorCPU = Output.median(floor)
        if fileOutput {
            result["copy_floor_cpu_seconds"] = (floorCPU * 1000).rounded() / 1000
            result["copy_floor_cpu_seconds_per_gib"] = perGiB(floorCPU)
        }
        let tlsMid = compareTls ? Output.median(encrypted.map { $0.throughput }) : 0
        let tlsRun = compareTls ? encrypted.sorted { $0.throughput < $1.throughput }[encrypted.count / 2] : run
        result["tls"] = compareTls ? "compare" : tls
        if compareTls {
            result["tls_bytes_per_sec"] = tlsMid.rounded()
            result["tls_ratio"] = (tlsMid / mid * 1000).rounded() / 1000
            result["tls_cpu_seconds"] = (tlsRun.cpu * 1000).rounded() / 1000
        }
        // Per pipeline: its median throughput and CPU, and the median of the per-round ratios.
        var pipeRows: [(Bench.Pipeline, Double, Double, Double)] = []
        for p in pipelines {
            let rs = piped[p] ?? []
            let thr = Output.median(rs.map { $0.throughput })
            let paired = Output.median(zip(ours, rs).map { $0.throughput / $1.throughput })
            let cpu = Output.median(rs.map { $0.cpu })
            pipeRows.append((p, thr, paired, cpu))
            result["\(p.key)_bytes_per_sec"] = thr.rounded()
            result["ratio_vs_\(p.key)"] = (paired * 1000).rounded() / 1000
            result["\(p.key)_cpu_seconds"] = (cpu * 1000).rounded() / 1000
            result["\(p.key)_cpu_seconds_per_gib"] = perGiB(cpu)
        }
        if json {
            let data = try JSONSerialization.data(withJSONObject: result, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            let mode = compareTls ? "" : (tls == "psk" ? ", TLS 1.3 PSK" : "")
            print("stream-bench: \(Format.bytes(bytes)) \(profile), \(connections) connections, \(compression)\(mode), \(run.backend.rawValue), median of \(ours.count)")
            print("  input \(path), output \(output)\(warmPages ? ", free memory warmed before each run" : "")")
            print(String(format: "  devstream      %10.1f MiB/s  (wire %.2fx smaller, %.2f CPU s)", mid / 1048576, Double(bytes) / Double(max(run.wireBytes, 1)), bothCPU))
            print(String(format: "  CPU s per GiB  %10.3f  (sender %.3f, receiver %.3f)", perGiB(bothCPU), perGiB(sendCPU), perGiB(recvCPU)))
            if fileOutput {
                print(String(format: "  copy floor     %10.3f  CPU s per GiB (pread/pwrite of the file into a fresh one, one thread)", perGiB(floorCPU)))
            }
            if compareTls {
                print(String(format: "  devstream+TLS  %10.1f MiB/s  (TLS 1.3 PSK, AES-128-GCM, %.2f CPU s)", tlsMid / 1048576, tlsRun.cpu))
                print(String(format: "  TLS / plain    %10.2fx", tlsMid / mid))
            }
            print(String(format: "  plain socket   %10.1f MiB/s  (baseline, no compression)", baseMid / 1048576))
            print(String(format: "  ratio          %10.2fx", mid / baseMid))
            for (p, thr, paired, cpu) in pipeRows {
                print("  " + p.label.padding(toLength: 14, withPad: " ", startingAt: 0)
                      + String(format: " %10.1f MiB/s  (devstream is %.2fx, paired; %.3f CPU s per GiB)", thr / 1048576, paired, perGiB(cpu)))
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
    struct Run {
        var throughput: Double; var elapsed: Double; var wireBytes: UInt64
        /// CPU seconds of the sending process (all its threads, io_uring workers included).
        var senderCPU: Double
        /// CPU seconds of the receiving child process (all its threads, io_uring workers included).
        var receiverCPU: Double
        var backend: IOBackendKind
        var cpu: Double { senderCPU + receiverCPU }
    }

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

    /// Faults in `bytes` of anonymous memory and frees it again (`--warm-pages`), so that the
    /// allocations of the run that follows come from free pages the hypervisor still backs.
    ///
    /// Why: this machine is a VM with free page reporting (`page_reporting.page_reporting_order=11`
    /// on the kernel command line, virtio-balloon). Free memory is reported to the host a couple
    /// of seconds after it is freed and the host drops it; the next first touch of such a page is
    /// a host fault. Writing 1 GiB into a fresh tmpfs file measured 0.48–2.8 CPU-s cold and
    /// 0.31–0.36 CPU-s right after this warm-up (`dd if=/dev/zero of=/dev/shm/x bs=1M count=1024`).
    /// Bare metal has no such cost. Pages are faulted with MADV_POPULATE_WRITE (one call), or
    /// touched one by one where the kernel lacks it.
    static func warmFreeMemory(_ bytes: UInt64) {
        let length = Int(bytes)
        guard length > 0, let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              p != MAP_FAILED else { return }
        defer { munmap(p, length) }
        let MADV_POPULATE_WRITE: Int32 = 23  // Linux 5.14; not in Glibc's module here
        if madvise(p, length, MADV_POPULATE_WRITE) != 0 {
            var off = 0
            while off < length { p.storeBytes(of: 1, toByteOffset: off, as: UInt8.self); off += 4096 }
        }
    }

    /// devstream over loopback: the sender in this process, the receiver in a child process
    /// (`stream-bench receive-child`), so each end's CPU time is counted apart, every thread of
    /// it included: the channel threads, the listener, and the io_uring workers (`iou-wrk-*`)
    /// its rings start, which belong to the process that made the ring. Threads that have
    /// exited still count (getrusage(RUSAGE_SELF) keeps them), which per-thread figures from
    /// /proc/self/task would lose.
    static func transfer(path: String, output: String, options: TransferOptions) throws -> Run {
        let child = try ReceiverProcess(output: output, options: options)
        let source = try TransferSource(path: path)
        let cpu0 = Output.cpuSeconds()
        let sent = TransferSender.send(source, to: Endpoint(host: "127.0.0.1", port: child.port), options: options, warn: { _ in })
        let senderCPU = Output.cpuSeconds() - cpu0
        let received = try child.finish()
        guard sent.completed, received.completed else {
            throw ValidationError("transfer failed: \(sent.error?.description ?? received.error ?? "unknown")")
        }
        guard received.digest == sent.digest.map(TransferDigest.hex) else {
            throw ValidationError("the receiver's digest \(received.digest ?? "none") differs from the sender's")
        }
        let elapsed = max(sent.elapsed.seconds, received.elapsed)
        return Run(throughput: Double(sent.bytes) / elapsed, elapsed: elapsed, wireBytes: sent.wireBytes,
                   senderCPU: senderCPU, receiverCPU: received.cpu, backend: sent.backend)
    }

    /// The least CPU any file-to-file transfer pays here: one thread copies the input into a fresh
    /// output file beside the devstream output (pread, pwrite, 1 MiB at a time), no network, no
    /// compression, no checksum. On this VM most of it is the first touch of the output's new
    /// pages (page allocation, and the hypervisor backing guest memory it had reclaimed), which
    /// devstream's receiver and every pipeline's last stage pay the same way.
    static func copyFloor(path: String, output: String) throws -> Double {
        let src = open(path, O_RDONLY | O_CLOEXEC)
        guard src >= 0 else { throw ValidationError("cannot open \(path)") }
        defer { close(src) }
        unlink(output)
        let dst = open(output, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard dst >= 0 else { throw ValidationError("cannot write \(output)") }
        defer { close(dst) }
        let chunk = 1 << 20
        let buf = UnsafeMutableRawPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buf.deallocate() }
        let cpu0 = Output.cpuSeconds(Output.rusageThread)
        var off = 0
        while true {
            let n = pread(src, buf, chunk, off_t(off))
            guard n > 0 else { break }
            guard pwrite(dst, buf, n, off_t(off)) == n else { throw ValidationError("writing \(output) failed") }
            off += n
        }
        return Output.cpuSeconds(Output.rusageThread) - cpu0
    }

    /// A regular file (or a path where one will be made): removed between runs, so tmpfs does not
    /// fill up and every run writes a fresh file.
    static func isRegularFileTarget(_ path: String) -> Bool {
        var st = stat()
        guard stat(path, &st) == 0 else { return path != "-" }
        return st.st_mode & S_IFMT == S_IFREG
    }

    static func removeOutput(_ path: String) { unlink(path); unlink(path + ".partial") }

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

    /// A peer pipeline measured against devstream: a compressor (or none) into `nc`, `nc` into the
    /// decompressor (or straight into the output).
    enum Pipeline: Hashable {
        case lz4, zstd, nc
        var key: String {
            switch self { case .lz4: "lz4_nc"; case .zstd: "zstd_nc"; case .nc: "nc" }
        }
        var label: String {
            switch self { case .lz4: "lz4 -1 | nc"; case .zstd: "zstd --fast=3"; case .nc: "nc (raw)" }
        }
        func sender(_ path: String, port: Int) -> String {
            switch self {
            case .lz4: "lz4 -1 -c '\(path)' | nc -N 127.0.0.1 \(port)"
            case .zstd: "zstd -q --fast=3 -T2 -c '\(path)' | nc -N 127.0.0.1 \(port)"
            case .nc: "nc -N 127.0.0.1 \(port) < '\(path)'"
            }
        }
        func receiver(_ output: String, port: Int) -> String {
            switch self {
            case .lz4: "nc -l 127.0.0.1 \(port) | lz4 -d -c > '\(output)'"
            case .zstd: "nc -l 127.0.0.1 \(port) | zstd -q -d -c > '\(output)'"
            case .nc: "nc -l 127.0.0.1 \(port) > '\(output)'"
            }
        }
    }

    struct PipeRun { var throughput: Double; var cpu: Double }

    /// Runs `pipeline` from `path` into `output` over loopback, timed end to end (less the 0.3 s
    /// head start its listener gets); its CPU time is every process of it (RUSAGE_CHILDREN).
    static func pipeline(_ pipeline: Pipeline, path: String, output: String) throws -> PipeRun {
        var st = stat(); stat(path, &st)
        let port = 20000 + Int(getpid() % 20000)
        let script = """
        \(pipeline.receiver(output, port: port)) & R=$!
        sleep 0.3
        \(pipeline.sender(path, port: port))
        wait $R
        """
        let cpu0 = Output.cpuSeconds(RUSAGE_CHILDREN.rawValue)
        let t0 = Monotonic.now
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", script]
        try p.run()
        p.waitUntilExit()
        let dt = (Monotonic.now - t0).seconds - 0.3
        let cpu = Output.cpuSeconds(RUSAGE_CHILDREN.rawValue) - cpu0
        guard p.terminationStatus == 0 else { throw ValidationError("the \(pipeline.label) pipeline failed (are lz4, zstd and netcat-openbsd installed? see .ci/deps)") }
        if isRegularFileTarget(output) {
            var out = stat()
            guard stat(output, &out) == 0, out.st_size == st.st_size else {
                throw ValidationError("the \(pipeline.label) pipeline wrote \(out.st_size) of \(st.st_size) bytes")
            }
        }
        return PipeRun(throughput: Double(st.st_size) / dt, cpu: cpu)
    }
}

/// The receiving end of one benchmark transfer, in a child process (`stream-bench receive-child`)
/// so that its CPU time is its own.
final class ReceiverProcess {
    struct Result { var completed: Bool; var error: String?; var elapsed: Double; var cpu: Double; var digest: String? }
    let port: UInt16
    private let process: Process
    private let stdout: FileHandle

    /// Starts the child, hands it the options (the PSK as hex on its stdin) and reads its port.
    init(output: String, options: TransferOptions) throws {
        var args = ["receive-child", "--output", output, "--timeout", "\(Int(options.timeout.seconds))"]
        var key = ""
        if let sec = options.security, case .psk(let k) = sec.mode { key = k.map { String(format: "%02x", $0) }.joined() }
        else if options.allowInsecure { args.append("--insecure") }
        if options.backend == .blocking { args.append("--blocking") }
        process = Process()
        process.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        process.arguments = args
        let input = Pipe(), out = Pipe()
        process.standardInput = input
        process.standardOutput = out
        stdout = out.fileHandleForReading
        try process.run()
        try input.fileHandleForWriting.write(contentsOf: Array((key + "\n").utf8))
        try input.fileHandleForWriting.close()
        guard let line = Self.readLine(stdout), let p = UInt16(line) else {
            process.waitUntilExit()
            throw ValidationError("the receiving child process did not start (exit \(process.terminationStatus))")
        }
        port = p
    }

    /// Waits for the child and reads its report (one JSON line).
    func finish() throws -> Result {
        let rest = stdout.readDataToEndOfFile()
        process.waitUntilExit()
        guard let obj = try? JSONSerialization.jsonObject(with: rest) as? [String: Any] else {
            throw ValidationError("the receiving child process reported nothing (exit \(process.terminationStatus))")
        }
        return Result(completed: obj["completed"] as? Bool ?? false, error: obj["error"] as? String,
                      elapsed: (obj["elapsed"] as? Double) ?? 0, cpu: (obj["cpu"] as? Double) ?? 0,
                      digest: obj["xxh3"] as? String)
    }

    private static func readLine(_ h: FileHandle) -> String? {
        var bytes: [UInt8] = []
        while true {
            guard let d = try? h.read(upToCount: 1), let b = d.first else { return nil }
            if b == 10 { return String(decoding: bytes, as: UTF8.self) }
            bytes.append(b)
        }
    }
}

/// The child half of `Bench.transfer`: listens on a loopback port, prints it, receives one
/// transfer into `--output`, and prints one JSON line with its own CPU time (all its threads).
struct ReceiveChild: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "receive-child", abstract: "Internal: the receiving end of a benchmark transfer.",
                                                    shouldDisplay: false)
    @Option var output: String
    @Option var timeout: Int = 30
    @Flag var insecure = false
    @Flag var blocking = false

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        let cpu0 = Output.cpuSeconds()
        var options = TransferOptions()
        options.timeout = .seconds(timeout)
        options.allowInsecure = insecure
        if blocking { options.backend = .blocking }
        let key = (readLine() ?? "").trimmingCharacters(in: .whitespaces)
        if !key.isEmpty {
            var bytes: [UInt8] = []
            var it = key.makeIterator()
            while let a = it.next(), let b = it.next() { bytes.append(UInt8(String([a, b]), radix: 16) ?? 0) }
            options.security = SecurityOptions(.psk(key: bytes))
        }
        let receiver = try TransferReceiver(listen: Endpoint(host: "127.0.0.1", port: 0), options: options, warn: { _ in })
        print(receiver.listener.endpoint.port)
        fflush(nil)  // the parent reads the port through a pipe
        let r = receiver.receive(output: output, acceptTimeout: .seconds(30))
        let cpu = Output.cpuSeconds() - cpu0
        var obj: [String: Any] = ["completed": r.completed, "elapsed": r.elapsed.seconds, "cpu": cpu]
        if let e = r.error { obj["error"] = e.description }
        if let d = r.digest { obj["xxh3"] = TransferDigest.hex(d) }
        Output.jsonLine(obj)
    }
}
