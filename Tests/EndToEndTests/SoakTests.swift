import Testing
import Glibc
import Foundation
import Synchronization
import DSTestSupport
import DeviceStream
import DSSimulation
import DSSupport
import DSTransport
import DSDevices

/// The chaos soak: migrations back to back in one process, each through a proxy that, at random,
/// kills a connection, flips a byte, stalls or truncates a stream (or does nothing), on small
/// dirtying simulated devices with a short timeout. Every session must end either completed with
/// equal digests, or failed with the source device RUNNING and the destination not running (or,
/// when the fault hit the handover after `commit`, failed as the design says: the source never
/// restarts, and if the destination runs, it runs the source's exact state). Never a false
/// `completed`. Afterwards the process has the fds, threads and memory it had before.
///
/// It runs in a child process (this test binary again, filtered to this test): the other suites
/// run in parallel in the parent and would make its fd, thread and memory counts meaningless.
///
/// `DEVSTREAM_SOAK_SESSIONS` sets the count (default 30; 200 for the long form),
/// `DEVSTREAM_SOAK_SEED` the random seed (printed, to replay a run).
@Suite(.serialized) struct SoakTests {
    static let childVariable = "DEVSTREAM_SOAK_CHILD"

    @Test func chaosSoak() throws {
        let env = ProcessInfo.processInfo.environment
        if env[Self.childVariable] == "1" {
            try Soak(sessions: Int(env["DEVSTREAM_SOAK_SESSIONS"] ?? "") ?? 30,
                     seed: UInt64(env["DEVSTREAM_SOAK_SEED"] ?? "") ?? UInt64.random(in: 1...UInt64(UInt32.max))).run()
            return
        }
        let child = Process()
        child.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
        child.arguments = ["--testing-library", "swift-testing", "--filter", "SoakTests"]
        var e = env
        e[Self.childVariable] = "1"
        child.environment = e
        let out = Pipe()
        child.standardOutput = out
        child.standardError = out
        try child.run()
        // A hang (a session that never ends) fails the test instead of stalling the run: the
        // child gets a generous bound, then SIGKILL.
        let sessions = Int(env["DEVSTREAM_SOAK_SESSIONS"] ?? "") ?? 30
        let limit = Duration.seconds(120 + 5 * sessions)
        let watchdog = Watchdog(pid: child.processIdentifier, after: limit)
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        child.waitUntilExit()
        let killed = watchdog.stop()
        #expect(!killed, "the soak child ran past \(limit) and was killed:\n\(text.suffix(4000))")
        // The child's figures and any failure, in this run's output.
        for line in text.split(separator: "\n") where line.hasPrefix("soak:") || line.contains("✘") || line.contains("recorded an issue") {
            print(line)
        }
        #expect(child.terminationStatus == 0, "the soak child failed (status \(child.terminationStatus)):\n\(text.suffix(8000))")
        #expect(text.contains("soak: done"), "the soak child did not finish:\n\(text.suffix(4000))")
    }
}

/// Kills a process (SIGKILL) unless `stop()` comes within the time given.
final class Watchdog: @unchecked Sendable {
    // @unchecked: `stopped` and `fired` are guarded by `lock`.
    private let lock = ConditionLock()
    private var stopped = false
    private var fired = false
    private var thread: OSThread?

    init(pid: Int32, after limit: Duration) {
        thread = try? OSThread(name: "ds-test-watch") { [self] in
            lock.withLock {
                if !lock.wait(until: { stopped }, timeout: limit) {
                    fired = true
                    kill(pid, SIGKILL)
                }
            }
        }
    }

    /// Stops the watch; true if it had killed the process.
    func stop() -> Bool {
        lock.withLock { stopped = true; lock.broadcast() }
        // Let go of the thread after it ends: its closure holds `self`.
        let t = thread
        thread = nil
        t?.join()
        return lock.withLock { fired }
    }
}

/// One soak run (in the child process).
struct Soak {
    let sessions: Int
    let seed: UInt64
    /// Small devices: a few MiB each, dirtied while they migrate.
    static let deviceSize: UInt64 = 4 << 20
    /// How long a silent peer may go unnoticed: short, so stalls end quickly.
    static let timeout: Duration = .seconds(1)
    /// A stall below the timeout (the session should ride it out) and one well past it.
    static let shortStall: Duration = .milliseconds(150)
    static let longStall: Duration = .milliseconds(2500)
    /// No session may take longer (a hang fails the soak rather than the CI's clock).
    static let sessionLimit: Duration = .seconds(20)

    enum Outcome: String, CaseIterable {
        /// Both devices equal, the destination RUNNING, the source stopped.
        case completed
        /// Failed before `commit`: the source RUNNING again, the destination not running.
        case failedOnSource = "failed, source running"
        /// Failed after `commit` (the fault hit the handover): the source stays stopped, and the
        /// destination either runs the source's exact state or (commit lost) does not run.
        case failedAfterCommit = "failed after commit"
    }

    struct Session {
        var index: Int
        var fault: FaultProxy.Fault
        var connection: Int
        var direction: SessionFaultProxy.Direction
        var connections: Int
        var tls: Bool
        var fired = false
        var outcome: Outcome?
        var elapsed: Duration = .zero
        var sourceError: String?
        var destinationError: String?
        var destinationCompleted = false
        var destinationRunning = false

        var label: String {
            "session \(index): \(fault) on connection \(connection) \(direction.rawValue), \(connections) connection(s)\(tls ? ", TLS" : "")"
        }
    }

    /// Bytes each direction of each connection carries in a fault-free session, by
    /// (connections, tls): where faults are placed.
    struct Spans { var toServer: [Int]; var toClient: [Int] }

    func run() throws {
        print("soak: \(sessions) sessions, seed \(seed) (DEVSTREAM_SOAK_SEED=\(seed) replays it)")
        // glibc gives each thread that mallocs an arena (up to 8 per core), and what a finished
        // session's threads freed stays resident there: VmRSS then swings by megabytes with no
        // leak at all. Two arenas keep it a measure of leaks (as the C ABI's session test does).
        Malloc.limitArenas(2)
        var rng = TestRNG(seed)

        // Warm-up: the runtime's lazily made state (metadata, TLS contexts, the io_uring probe),
        // and each fault's paths once; it also measures how many bytes each stream carries.
        var spans: [String: Spans] = [:]
        for tls in [false, true] {
            for connections in [1, 2] {
                // A loaded machine may let the 1 s timeout pass: a few tries to measure a whole session.
                for attempt in 1...3 {
                    var s = Session(index: -1, fault: .none, connection: 0, direction: .toServer, connections: connections, tls: tls)
                    let r = try migrate(&s, seed: rng.next()).report
                    spans[Self.key(connections, tls)] = Spans(toServer: r.toServerBytes, toClient: r.toClientBytes)
                    if s.outcome == .completed { break }
                    #expect(attempt < 3, "warm-up \(s.label) never completed: \(s.sourceError ?? "") / \(s.destinationError ?? "")")
                }
            }
        }
        for fault in [FaultProxy.Fault.kill(after: 300_000), .flip(at: 200_000), .truncate(after: 100_000), .stall(after: 50_000, for: Self.shortStall)] {
            var s = Session(index: -1, fault: fault, connection: 0, direction: .toServer, connections: 1, tls: false)
            _ = try migrate(&s, seed: rng.next())
        }
        for (k, v) in spans.sorted(by: { $0.key < $1.key }) {
            print("soak: a fault-free session (\(k)) carries \(v.toServer) bytes to the destination, \(v.toClient) back, by connection")
        }

        let before = Usage.measure()
        let started = Monotonic.now
        var done: [Session] = []
        let kinds = ["none", "kill", "flip", "stall", "truncate"]
        for i in 0..<sessions {
            let connections = 1 + rng.below(2)
            let tls = rng.below(3) == 0
            let connection = rng.below(connections)
            let direction: SessionFaultProxy.Direction = rng.below(4) == 0 ? .toClient : .toServer
            let span = spans[Self.key(connections, tls)].map { direction == .toServer ? $0.toServer : $0.toClient } ?? []
            let length = max(1, connection < span.count ? span[connection] : 1)
            let at = rng.below(length)
            let fault: FaultProxy.Fault
            switch kinds[i % kinds.count] {
            case "kill": fault = .kill(after: at)
            case "flip": fault = .flip(at: at)
            case "stall": fault = .stall(after: at, for: rng.below(2) == 0 ? Self.shortStall : Self.longStall)
            case "truncate": fault = .truncate(after: at)
            default: fault = .none
            }
            var s = Session(index: i, fault: fault, connection: connection, direction: direction, connections: connections, tls: tls)
            _ = try migrate(&s, seed: rng.next())
            done.append(s)
        }
        let took = Monotonic.now - started
        let after = Usage.measure(settling: true)

        // The figures.
        print("soak: \(sessions) sessions in \(String(format: "%.1f", took.seconds)) s (\(String(format: "%.0f", took.seconds * 1000 / Double(max(sessions, 1)))) ms each, longest \(String(format: "%.2f", done.map(\.elapsed.seconds).max() ?? 0)) s)")
        for kind in kinds {
            let of = done.filter { $0.fault.kind == kind }
            guard !of.isEmpty else { continue }
            let counts = Outcome.allCases.map { o in "\(of.filter { $0.outcome == o }.count) \(o.rawValue)" }.joined(separator: ", ")
            let fired = kind == "none" ? "" : " (fault reached in \(of.filter(\.fired).count))"
            print("soak:   \(kind): \(of.count) sessions\(fired): \(counts)")
        }
        // A fault that reached its byte yet the session completed: the byte mattered to nothing
        // (the digests are equal: checked above). Listed to see where.
        for s in done where s.fired && s.outcome == .completed && s.fault.kind != "stall" {
            print("soak:   reached, yet completed: \(s.label)")
        }
        for s in done where s.outcome == .failedAfterCommit {
            print("soak:   after commit: \(s.label): destination \(s.destinationRunning ? "RUNNING" : "not running"), its report \(s.destinationCompleted ? "completed" : "failed"); source: \(s.sourceError ?? "")")
        }
        var codes: [String: Int] = [:]
        for s in done { if let e = s.sourceError { codes[Self.gist(e), default: 0] += 1 } }
        for (gist, n) in codes.sorted(by: { $0.value > $1.value }).prefix(8) { print("soak:   source error \(n)x: \(gist)") }
        print("soak: fds \(before.fds) -> \(after.fds), threads \(before.threads) -> \(after.threads) (ds-… \(before.sessionThreads) -> \(after.sessionThreads)), mappings \(before.maps) -> \(after.maps), VmRSS after malloc_trim \(before.rssKiB) -> \(after.rssKiB) KiB (\(after.rssKiB - before.rssKiB >= 0 ? "+" : "")\(after.rssKiB - before.rssKiB))")

        // The soak must have done something: fault-free sessions complete, and faults fired.
        let clean = done.filter { $0.fault.kind == "none" }
        // (Four in five: a loaded machine may let a 1 s timeout pass now and then.)
        #expect(clean.filter { $0.outcome == .completed }.count * 5 >= clean.count * 4,
                "fault-free sessions that did not complete: \(clean.filter { $0.outcome != .completed }.map { "\($0.label): \($0.sourceError ?? "")" })")
        let faulted = done.filter { $0.fault.kind != "none" }
        #expect(faulted.isEmpty || faulted.filter(\.fired).count * 2 >= faulted.count, "most faults never fired: the spans are off")

        // Nothing left behind.
        #expect(after.fds == before.fds, "file descriptors leaked: \(before.fds) -> \(after.fds)")
        // Every thread the library (and this test) starts is named ds-…: none may outlive its
        // session. The runtime's own pools (swift-testing, dispatch) come and go: the total may
        // shrink, never grow.
        #expect(after.sessionThreads == 0 && before.sessionThreads == 0,
                "ds-… threads left: \(before.sessionThreads) before, \(after.sessionThreads) after: \(Usage.threadNames().filter { $0.hasPrefix("ds-") })")
        #expect(after.threads <= before.threads, "threads leaked: \(before.threads) -> \(after.threads)")
        #expect(after.maps <= before.maps + 8, "memory mappings leaked: \(before.maps) -> \(after.maps)")
        // 8 MiB whatever the count: a session's buffer pool or device left behind fails at once,
        // 40 KiB a session fails the long form. (Small leaks are LeakSanitizer's: the soak runs
        // under Tests/sanitize.sh address too.)
        if let sanitizer = Sanitizer.running {
            // AddressSanitizer holds freed memory in quarantine (256 MiB), ThreadSanitizer's shadow
            // and sync metadata grow with every new address: VmRSS measures them, not us. Leaks
            // are LeakSanitizer's there (Tests/sanitize.sh address), checked at exit.
            print("soak: VmRSS not bounded under \(sanitizer) (its own memory grows)")
        } else {
            #expect(after.rssKiB - before.rssKiB <= 8 * 1024, "VmRSS grew \(after.rssKiB - before.rssKiB) KiB")
        }
        print("soak: done")
    }

    static func key(_ connections: Int, _ tls: Bool) -> String { "\(connections) connection(s)\(tls ? ", TLS" : "")" }

    /// An error message without its numbers and device specs, to group them.
    static func gist(_ message: String) -> String {
        let head = message.split(separator: ";").first.map(String.init) ?? message
        return String(head.map { $0.isNumber ? "#" : $0 }.prefix(110))
    }

    /// One migration through a `SessionFaultProxy`, checked; fills in `s`'s outcome.
    @discardableResult
    func migrate(_ s: inout Session, seed: UInt64) throws -> SessionFaultProxy {
        let src = try SimulatedDevice(size: Self.deviceSize, dirtyRate: 8 << 20, hotFraction: 0.25, profile: .mixed, seed: seed)
        let dst = try SimulatedDevice(destinationSize: Self.deviceSize)
        defer { src.close(); dst.close() }
        var config = MigrationConfiguration()
        config.transfer.connections = s.connections
        config.transfer.timeout = Self.timeout
        config.transfer.chunkSize = 256 << 10
        // Plaintext sessions are the fault proxy's point (it flips bytes a TLS record would catch
        // as a bad tag); they say so explicitly, as sessions must since plaintext is opt-in.
        if s.tls { config.transfer.security = SecurityOptions(.psk(key: [UInt8](repeating: 0x5A, count: 32))) } else { config.transfer.allowInsecure = true }
        config.scheduler.downtimeLimit = .milliseconds(300)
        config.scheduler.policy = .switchover
        config.scheduler.deadline = .seconds(3)

        let destination = try MigrationDestination(listen: Endpoint(host: "127.0.0.1", port: 0), devices: [dst], options: config.transfer, warn: { _ in })
        let proxy = try SessionFaultProxy(to: destination.listener.endpoint, fault: s.fault, connection: s.connection, direction: s.direction)
        let d = Mutex<MigrationReport?>(nil)
        let t0 = Monotonic.now
        let t = try OSThread(name: "ds-test") { let r = destination.run(acceptTimeout: .seconds(5)); d.withLock { $0 = r } }
        let sr = MigrationSource(devices: [src], configuration: config, warn: { _ in }).migrate(to: proxy.endpoint)
        t.join()
        proxy.join()
        s.elapsed = Monotonic.now - t0
        let dr = d.withLock { $0! }
        s.fired = proxy.report.fired
        s.sourceError = sr.error?.message
        s.destinationError = dr.error?.message
        s.destinationCompleted = dr.completed

        let label = s.label
        let srcRunning = src.state == .running, dstRunning = dst.state == .running
        s.destinationRunning = dstRunning
        #expect(s.elapsed < Self.sessionLimit, "\(label): took \(s.elapsed)")
        #expect(!(srcRunning && dstRunning), "\(label): the device runs at both ends")
        if sr.completed {
            s.outcome = .completed
            #expect(dstRunning && !srcRunning, "\(label): completed, but the source is \(src.state) and the destination \(dst.state)")
            #expect(try src.digest() == dst.digest(), "\(label): completed with different state at the two ends")
            #expect(sr.devices[0].sourceDigest != nil && sr.devices[0].sourceDigest == sr.devices[0].destinationDigest,
                    "\(label): the report's digests differ")
        } else if srcRunning {
            s.outcome = .failedOnSource
            #expect(!dstRunning && !dr.completed, "\(label): the source runs again, yet the destination \(dr.completed ? "completed" : "runs")")
            #expect(sr.error != nil && !(sr.error?.message.isEmpty ?? true), "\(label): a failure without a message")
        } else {
            s.outcome = .failedAfterCommit
            let message = sr.error?.message ?? ""
            #expect(message.contains("committed") || message.contains("after the handover"),
                    "\(label): the source stays \(src.state) but its error does not say it committed: \(message)")
            if dstRunning {
                #expect(try src.digest() == dst.digest(), "\(label): the destination runs a state other than the source's")
            }
        }
        // The destination never claims a copy it does not run, or one that differs.
        if dr.completed {
            #expect(dstRunning, "\(label): the destination completed but its device is \(dst.state)")
            if dstRunning { #expect(try src.digest() == dst.digest(), "\(label): the destination completed with different state") }
        } else {
            #expect(dr.error != nil, "\(label): the destination failed without an error")
        }
        return proxy
    }
}

/// What the process holds: descriptors, threads, mappings, resident memory.
struct Usage {
    var fds: Int
    var threads: Int
    /// Threads named ds-… (the library's, and the test's own).
    var sessionThreads: Int
    var maps: Int
    var rssKiB: Int

    /// Measures, after giving malloc's free memory back (`malloc_trim`); with `settling`, first
    /// waits up to 2 s for ds-… threads that are still finishing to go.
    static func measure(settling: Bool = false) -> Usage {
        if settling {
            let deadline = Monotonic.now + .seconds(2)
            while threadNames().contains(where: { $0.hasPrefix("ds-") }) && Monotonic.now < deadline { usleep(10_000) }
        }
        Malloc.trim()
        return Usage(fds: (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count).map { $0 - 1 } ?? -1,
                     threads: status("Threads"),
                     sessionThreads: threadNames().filter { $0.hasPrefix("ds-") }.count,
                     maps: ((try? String(contentsOfFile: "/proc/self/maps", encoding: .utf8)) ?? "").split(separator: "\n").count,
                     rssKiB: status("VmRSS"))
    }

    /// The names of this process's threads.
    static func threadNames() -> [String] {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
        return tasks.compactMap { try? String(contentsOfFile: "/proc/self/task/\($0)/comm", encoding: .utf8) }
            .map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
    }

    /// A number field of /proc/self/status (kB for sizes).
    static func status(_ field: String) -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return -1 }
        for line in text.split(separator: "\n") where line.hasPrefix(field + ":") {
            return Int(line.dropFirst(field.count + 1).split(whereSeparator: { $0 == " " || $0 == "\t" }).first ?? "") ?? -1
        }
        return -1
    }
}

/// glibc's malloc tuning, which Swift's Glibc module leaves out (malloc.h): looked up by name.
enum Malloc {
    private static func function<T>(_ name: String, as: T.Type) -> T? {
        dlsym(nil /* RTLD_DEFAULT */, name).map { unsafeBitCast($0, to: T.self) }
    }

    /// `mallopt(M_ARENA_MAX, n)`.
    static func limitArenas(_ n: Int32) {
        let M_ARENA_MAX: Int32 = -8  // malloc.h
        _ = function("mallopt", as: (@convention(c) (Int32, Int32) -> Int32).self)?(M_ARENA_MAX, n)
    }

    /// `malloc_trim(0)`: free memory goes back to the kernel, so VmRSS counts what is in use.
    static func trim() {
        _ = function("malloc_trim", as: (@convention(c) (Int) -> Int32).self)?(0)
    }
}

/// Which sanitizer this process runs under (its runtime's entry point is there or not).
enum Sanitizer {
    static let running: String? = dlsym(nil, "__asan_init") != nil ? "AddressSanitizer"
        : dlsym(nil, "__tsan_init") != nil ? "ThreadSanitizer" : nil
}
