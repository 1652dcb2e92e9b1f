import ArgumentParser
import DSCLISupport
import DSSimulation
import DSSupport
import DSTransport
import Foundation
import Glibc
import Synchronization

/// `stream-bench tail`: the latency of the last bytes of a burst through the ordered stream path
/// (`devstream send -` → `devstream receive --output -`), as QEMU's `exec:` migration sees it at
/// switchover: the producer writes a burst into a pipe and then pauses with the pipe open, and
/// the tail is the time from the burst's last byte written to the same byte read from the
/// receiver's output pipe. Measured in this process, in the same run, for devstream plaintext,
/// devstream over TLS 1.3 PSK, and a plain TCP socket (the producer writing into the socket, the
/// reader reading it: what QEMU's `tcp:` migration does). The writer's stamp is taken just
/// before the `write` of the burst's last page (once that write cannot block), so a tail
/// includes that syscall and is never below zero.
struct StreamTail: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tail",
        abstract: "Time from a paused producer's last byte to the receiver having it: devstream's stream path (plaintext, PSK) against a plain TCP socket.")
    @Option(help: "Bursts per mode (the first is a warm-up, not counted).") var bursts: Int = 50
    @Option(help: "Bytes per burst (a size that is not a multiple of the chunk leaves a partial chunk).") var burstSize: String = "300K"
    @Option(help: "Pause after each burst has arrived, with the input open.") var pause: String = "20ms"
    @Option(help: "TCP connections (devstream).") var connections: Int = 2
    @Option(help: "Chunk size (devstream).") var chunkSize: String = "1M"
    @Option(help: "lz4 or none (devstream).") var compression: String = "lz4"
    @Option(help: "Content: mixed (device-memory-like), zero, random, text.") var profile: String = "mixed"
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        guard let prof = ContentProfile(rawValue: profile) else { throw ValidationError("--profile must be mixed, zero, random or text") }
        guard bursts >= 2 else { throw ValidationError("--bursts must be at least 2 (the first is a warm-up)") }
        let size = Int(try SizeParsing.parse(burstSize))
        guard size > 0 else { throw ValidationError("--burst-size must be at least 1 byte") }
        let gap = try DurationParsing.parse(pause)
        guard compression == "lz4" || compression == "none" else { throw ValidationError("--compression must be lz4 or none") }
        var options = TransferOptions()
        options.connections = connections
        options.compression = compression == "lz4"
        options.chunkSize = Int(try SizeParsing.parse(chunkSize))
        options.backend = try CLIEnvironment.backend()
        options.allowInsecure = true  // the benchmark's own generated data, between its own two ends
        try options.validate()
        let secured = Bench.withRandomPSK(options)

        let plan = TailPlan(bursts: bursts, size: size, pause: gap, profile: prof)
        let tcp = try plan.measure(TailRun.plainTCP)
        let plain = try plan.measure { try TailRun.devstream($0, options: options) }
        let psk = try plan.measure { try TailRun.devstream($0, options: secured) }

        func summary(_ xs: [Double]) -> [String: Any] {
            let s = xs.sorted()
            return ["median_ms": round3(Output.median(s) * 1000), "p90_ms": round3(s[s.count * 9 / 10] * 1000),
                    "min_ms": round3(s[0] * 1000), "max_ms": round3(s[s.count - 1] * 1000),
                    "samples_ms": xs.map { round3($0 * 1000) }]
        }
        let result: [String: Any] = [
            "mode": "tail", "tcp": summary(tcp), "devstream": summary(plain), "devstream_psk": summary(psk),
            "devstream_minus_tcp_ms": round3((Output.median(plain) - Output.median(tcp)) * 1000),
            "devstream_psk_minus_tcp_ms": round3((Output.median(psk) - Output.median(tcp)) * 1000),
            "config": ["bursts": bursts - 1, "burst_size": size, "pause_ms": gap.milliseconds, "connections": connections,
                       "chunk_size": options.chunkSize, "compression": compression, "profile": profile],
        ]
        if json {
            Output.jsonLine(result)
            return
        }
        print("stream-bench tail: \(bursts - 1) bursts of \(Format.bytes(UInt64(size))) \(profile), \(String(format: "%g", gap.milliseconds)) ms pauses, \(connections) connections, \(Format.bytes(UInt64(options.chunkSize))) chunks, \(compression)")
        print("  last byte written → read, ms     median      p90      min      max")
        for (name, xs) in [("plain TCP socket", tcp), ("devstream", plain), ("devstream PSK", psk)] {
            let s = xs.sorted()
            print("  " + name.padding(toLength: 30, withPad: " ", startingAt: 0)
                  + String(format: " %8.3f %8.3f %8.3f %8.3f", Output.median(s) * 1000, s[s.count * 9 / 10] * 1000, s[0] * 1000, s[s.count - 1] * 1000))
        }
        print(String(format: "  median over plain TCP: devstream %+.3f ms, PSK %+.3f ms", (Output.median(plain) - Output.median(tcp)) * 1000, (Output.median(psk) - Output.median(tcp)) * 1000))
    }

    private func round3(_ x: Double) -> Double { (x * 1000).rounded() / 1000 }
}

/// The bursts: sizes, pause, content, all generated before the clock runs.
struct TailPlan {
    let bursts: Int
    let size: Int
    let pause: Duration
    let profile: ContentProfile

    /// Runs one mode: `connect` makes the pipe (or socket) the producer writes into and starts
    /// whatever carries its bytes to `probe`'s reader; returns each burst's tail in seconds,
    /// the warm-up burst left out.
    func measure(_ connect: (TailProbe) throws -> TailRun) throws -> [Double] {
        let probe = TailProbe(bursts: bursts, size: size)
        let data = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 4096)
        defer { data.deallocate() }
        let run = try connect(probe)
        var written = [Double](repeating: 0, count: bursts)
        var failure: String?
        for k in 0..<bursts {
            ContentGenerator.fill(data, profile: profile, seed: 7, offset: UInt64(k * size))
            // The burst but its last page, then (once the pipe or socket has room for it, so the
            // write does not wait) the clock, then the last page: the stamp comes before the
            // last byte is written, never after it arrived (a stamp taken after `write` returns
            // can land after the reader's, when this thread is preempted in between).
            let last = min(4096, size)
            if !put(run.input, data.baseAddress!, size - last) || !waitForRoom(run.input) {
                failure = "writing burst \(k) failed: \(Errno.current)"; break
            }
            written[k] = Monotonic.now.seconds
            guard put(run.input, data.baseAddress! + size - last, last) else { failure = "writing burst \(k) failed: \(Errno.current)"; break }
            // Not part of the figure: the reader stamps the arrival; this only keeps the bursts apart.
            guard probe.waitForBurst(k, limit: .seconds(30)) else { failure = "burst \(k) did not arrive within 30 s"; break }
            usleep(UInt32(pause.seconds * 1e6))
        }
        try run.finish()
        if let failure { throw ValidationError("\(run.name): \(failure)") }
        return (1..<bursts).map { probe.arrival($0) - written[$0] }
    }

    private func put(_ fd: Int32, _ bytes: UnsafeMutableRawPointer, _ count: Int) -> Bool {
        var off = 0
        while off < count {
            let n = write(fd, bytes + off, count - off)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return false }
            off += n
        }
        return true
    }

    /// Waits until `fd` takes a write without blocking (a pipe: a free page; a socket: room).
    private func waitForRoom(_ fd: Int32) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        while true {
            let rc = poll(&p, 1, 30_000)
            if rc > 0 { return p.revents & Int16(POLLOUT) != 0 }
            if rc == 0 || errno != EINTR { return false }
        }
    }
}

/// The reader at the far end: reads the output and stamps the time each burst's last byte
/// arrived (its arrival array is made before the run; nothing is allocated per read).
final class TailProbe: Sendable {
    let bursts: Int
    let size: Int
    private let arrived: Mutex<[Double]>
    private let count = Atomic<Int>(0)

    init(bursts: Int, size: Int) {
        self.bursts = bursts
        self.size = size
        arrived = Mutex([Double](repeating: 0, count: bursts))
    }

    /// Reads `fd` to its end, stamping arrivals; returns the bytes read.
    func read(_ fd: Int32) -> Int {
        let buf = UnsafeMutableRawPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buf.deallocate() }
        var total = 0
        while true {
            let n = Glibc.read(fd, buf, 1 << 20)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return total }
            total += n
            let done = min(total / size, bursts)
            let seen = count.load(ordering: .acquiring)
            if done > seen {
                let now = Monotonic.now.seconds
                arrived.withLock { for k in seen..<done { $0[k] = now } }
                count.store(done, ordering: .releasing)
            }
        }
    }

    func waitForBurst(_ k: Int, limit: Duration) -> Bool {
        let end = Monotonic.now + limit
        while count.load(ordering: .acquiring) <= k {
            if Monotonic.now > end { return false }
            usleep(20)
        }
        return true
    }

    func arrival(_ k: Int) -> Double { arrived.withLock { $0[k] } }
}

/// One mode's carrier: the fd the producer writes, and how to end it.
struct TailRun {
    let name: String
    let input: Int32
    let finish: () throws -> Void

    /// A plain TCP socket over loopback (TCP_NODELAY, as devstream's own sockets): the producer
    /// writes into it, the probe reads the other end.
    static func plainTCP(_ probe: TailProbe) throws -> TailRun {
        let (lfd, port) = try Sockets.listen(Endpoint(host: "127.0.0.1", port: 0))
        let reader = try OSThread(name: "bench-tail-tcp") {
            let c = accept(lfd, nil, nil)
            _ = probe.read(c)
            close(c)
        }
        let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard Bench.connectLoopback(s, port: port) == 0 else { close(s); close(lfd); reader.join(); throw ValidationError("connecting the baseline socket failed: \(Errno.current)") }
        Sockets.configure(s)
        return TailRun(name: "plain TCP", input: s, finish: { close(s); reader.join(); close(lfd) })
    }

    /// devstream's stream path, sender and receiver in this process: the producer writes into a
    /// pipe that `TransferSource` reads (as `send -` reads QEMU's `exec:` pipe), the receiver
    /// writes into a pipe the probe reads (as `receive --output -` feeds QEMU's `-incoming exec:`).
    static func devstream(_ probe: TailProbe, options: TransferOptions) throws -> TailRun {
        var i: [Int32] = [0, 0], o: [Int32] = [0, 0]
        guard pipe(&i) == 0 else { throw ValidationError("pipe: \(Errno.current)") }
        guard pipe(&o) == 0 else { close(i[0]); close(i[1]); throw ValidationError("pipe: \(Errno.current)") }
        let (inRead, inWrite, outRead, outWrite) = (i[0], i[1], o[0], o[1])
        let receiver = try TransferReceiver(listen: Endpoint(host: "127.0.0.1", port: 0), options: options, warn: { _ in })
        let source = try TransferSource(path: "/proc/self/fd/\(inRead)")
        close(inRead)  // the source holds its own descriptor
        nonisolated(unsafe) var received: TransferReport?, sent: TransferReport?
        let receiving = try OSThread(name: "bench-tail-receive") {
            received = receiver.receive(output: "/proc/self/fd/\(outWrite)", acceptTimeout: .seconds(30))
            close(outWrite)  // the probe's read ends
        }
        let reading = try OSThread(name: "bench-tail-read") { _ = probe.read(outRead); close(outRead) }
        let endpoint = receiver.listener.endpoint
        let sending = try OSThread(name: "bench-tail-send") {
            sent = TransferSender.send(source, to: endpoint, options: options, warn: { _ in })
        }
        let name = options.security == nil ? "devstream" : "devstream PSK"
        return TailRun(name: name, input: inWrite, finish: {
            close(inWrite)  // end of input: the transfer completes
            sending.join(); receiving.join(); reading.join()
            guard sent?.completed == true, received?.completed == true, sent?.digest == received?.digest else {
                throw ValidationError("\(name): the transfer failed: \(sent?.error?.description ?? received?.error?.description ?? "digests differ")")
            }
        })
    }
}
