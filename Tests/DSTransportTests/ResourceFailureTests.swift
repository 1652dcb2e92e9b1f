import Testing
import Glibc
import DSRing
@testable import DSTransport
import DSTestSupport
import DSSupport

/// The library runs inside a VMM: a thread or memory it cannot get fails the transfer with an
/// error that says so, never a trap. `ResourceFaults` makes the failures happen on the test's
/// thread and the threads it starts, and nowhere else.
@Suite(.serialized) struct ResourceFailureTests {
    /// Runs a receiver on a thread (`receiverFaults` injected there) and a sender here
    /// (`senderFaults` injected here).
    /// `warnings`, when given, collects both ends' warnings; `check` sees the output file
    /// before it is removed.
    func transfer(senderFaults: ResourceFaults? = nil, receiverFaults: ResourceFaults? = nil,
                  options o: TransferOptions = options(connections: 2, timeout: .seconds(2)),
                  warnings: Warnings? = nil, check: (_ source: String, _ output: String) -> Void = { _, _ in })
        throws -> (sent: TransferReport, received: TransferReport) {
        let src = tmpPath("src"), out = tmpPath("out")
        defer { unlink(src); unlink(out) }
        writeFile(src, testData(1_000_000, seed: 3))
        let warnings = warnings ?? Warnings()
        let warn = warnings.sink
        let receiver = try TransferReceiver(listen: Endpoint(host: "127.0.0.1", port: 0), options: o, warn: warn)
        nonisolated(unsafe) var received: TransferReport?
        let t = try OSThread(name: "ds-test-recv") {
            let run = { receiver.receive(output: out, acceptTimeout: .seconds(3)) }
            received = receiverFaults.map { $0.run(run) } ?? run()
        }
        let source = try TransferSource(path: src)
        let send = { TransferSender.send(source, to: receiver.listener.endpoint, options: o, warn: warn) }
        let sent = senderFaults.map { $0.run(send) } ?? send()
        t.join()
        check(src, out)
        return (sent, received!)
    }

    /// Rings that cannot be set up for lack of locked memory (RLIMIT_MEMLOCK, shared by all of
    /// a user's processes) run blocking syscalls: at each end, every channel's ring fails here,
    /// and the transfer still completes with every byte, each end saying why once.
    @Test func ringsOutOfLockedMemoryFallBackAndTheTransferCompletes() throws {
        let warnings = Warnings()
        let (sent, received) = try transfer(senderFaults: ResourceFaults(.ring), receiverFaults: ResourceFaults(.ring),
                                            warnings: warnings) { src, out in
            #expect(readFile(out) == readFile(src))
        }
        #expect(sent.completed && received.completed, "\(sent.error?.message ?? "") \(received.error?.message ?? "")")
        #expect(sent.digest != nil && sent.digest == received.digest)
        let memlock = warnings.lines.withLock { $0 }.filter { $0.contains("RLIMIT_MEMLOCK") && $0.contains("blocking syscalls") }
        #expect(memlock.count == 2, "one warning from each end's channel 0: \(warnings.lines.withLock { $0 })")
    }

    @Test func senderThreadStartFailureIsAnError() throws {
        // Channel 0's thread starts, channel 1's does not: the started one is wound down.
        let (sent, received) = try transfer(senderFaults: ResourceFaults(.thread, after: 1))
        #expect(!sent.completed && !received.completed)
        #expect(sent.error?.code == .localIO)
        let m = sent.error?.message ?? ""
        #expect(m.contains("cannot start thread ds-send-1") && m.contains("pthread_create") && m.contains("EAGAIN"), "\(m)")
        #expect(m.contains("thread limits"), "says what to do: \(m)")
    }

    @Test func senderBufferAllocationFailureIsAnError() throws {
        let (sent, received) = try transfer(senderFaults: ResourceFaults(.memory))
        #expect(!sent.completed && !received.completed)
        #expect(sent.error?.code == .localIO)
        let m = sent.error?.message ?? ""
        #expect(m.contains("cannot allocate the I/O buffers of channel") && m.contains("ENOMEM"), "\(m)")
    }

    /// The receiver's failure reaches the sender with its reason.
    @Test func receiverBufferAllocationFailureReachesTheSender() throws {
        let (sent, received) = try transfer(receiverFaults: ResourceFaults(.memory))
        #expect(!sent.completed && !received.completed)
        #expect(received.error?.code == .localIO)
        #expect(received.error?.message.contains("cannot allocate the I/O buffers") == true, "\(received.error?.message ?? "")")
        #expect(sent.error?.message.contains("cannot allocate") == true, "\(sent.error?.message ?? "")")
    }

    @Test func listenerThreadStartFailureIsAnError() throws {
        let e = ResourceFaults(.thread).run { () -> TransferError? in
            do throws(TransferError) { _ = try TransferReceiver(listen: Endpoint(host: "127.0.0.1", port: 0), options: options(), warn: { _ in }) } catch {
                return error
            }
            return nil
        }
        #expect(e?.code == .localIO)
        // The first thread it starts: the admission timer (then the accept loop).
        #expect(e?.message.contains("ds-admission") == true || e?.message.contains("ds-accept") == true, "\(e?.message ?? "")")
    }

    @Test func keepaliveThreadStartFailureIsAnError() {
        #expect(throws: TransferError.self) {
            try ResourceFaults(.thread).run { () throws(TransferError) in _ = try KeepalivePacer(interval: .milliseconds(10), abort: AbortSignal()) }
        }
    }

    /// A session forced onto the blocking backend runs its rings there, with no environment
    /// variable set; unforced, it runs on the probe's (io_uring on this machine). The report's
    /// backend is the one the channels' rings ran on.
    @Test func forcedBlockingBackendWithoutEnvironment() throws {
        #expect(getenv("DEVSTREAM_IO_BACKEND") == nil)
        let (probed, probedAtReceiver) = try transfer(options: options(connections: 2))
        #expect(probed.completed && probedAtReceiver.completed)
        #expect(probed.backend == IOBackend.probed && probedAtReceiver.backend == IOBackend.probed)
        let (sent, received) = try transfer(options: options(connections: 2, backend: .blocking))
        #expect(sent.completed && received.completed, "\(sent.error?.message ?? "") \(received.error?.message ?? "")")
        #expect(sent.backend == .blocking && received.backend == .blocking)
    }
}
