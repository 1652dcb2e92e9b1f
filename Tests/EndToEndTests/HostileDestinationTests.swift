import Testing
import Glibc
import Synchronization
import DSTestSupport
@testable import DeviceStream
import DSSimulation
import DSSupport
import DSWire
import DSCodec
import DSRing
import DSTransport
import DSDevices
import DSScheduler

/// A destination played by hand, which sends a handover message before its time. The source
/// must refuse it, fail, and restart its devices (nothing was committed).
@Suite struct HostileDestinationTests {
    /// Reads one whole frame (header and payload) from a blocking socket.
    static func readFrame(_ fd: Int32) -> (header: FrameHeader, payload: [UInt8])? {
        func readExactly(_ n: Int) -> [UInt8]? {
            var out = [UInt8](repeating: 0, count: n)
            var got = 0
            while got < n {
                let r = out.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, n - got, 0) }
                if r <= 0 { return nil }
                got += r
            }
            return out
        }
        guard let h = readExactly(FrameHeader.size),
              let header = try? h.withUnsafeBytes({ try FrameHeader.decode($0) }),
              let payload = readExactly(Int(header.wireLength)) else { return nil }
        return (header, payload)
    }

    /// `early` with aux 999: a load report for a round the source has not sent.
    @Test(arguments: [FrameType.resumed, .loaded, .ack, .loadStats])
    func aHandoverMessageBeforeItsTimeIsRefused(early: FrameType) throws {
        let (lfd, port) = try Sockets.listen(Endpoint(host: "127.0.0.1", port: 0))
        defer { close(lfd) }
        let peer = try OSThread(name: "ds-test") {
            let fd = accept(lfd, nil, nil)
            guard fd >= 0 else { return }
            defer { close(fd) }
            var pre = [UInt8](repeating: 0, count: Preamble.size)
            guard pre.withUnsafeMutableBytes({ recv(fd, $0.baseAddress, $0.count, Int32(MSG_WAITALL)) }) == Preamble.size else { return }
            sendRaw(fd, controlFrame(.accept))
            // Device section, then answer the setup and its pings honestly.
            guard let d = Self.readFrame(fd), d.header.type == .deviceSection else { return }
            sendRaw(fd, controlFrame(.accept))
            for _ in 0..<3 {
                guard let p = Self.readFrame(fd), p.header.type == .ping else { return }
                sendRaw(fd, controlFrame(.pong, position: p.header.position))
            }
            // Now, while pre-copy has only begun: the early message (a well-formed payload).
            let payload: [UInt8] = early == .ack ? DeviceDigests([nil]).encoded() : Loaded(loadMilliseconds: 1, validateMilliseconds: 1).encoded()
            sendRaw(fd, controlFrame(early, aux: early == .loadStats ? 999 : 0, payload: payload))
            // Keep reading until the source gives up.
            while Self.readFrame(fd) != nil {}
        }
        defer { peer.join() }
        let device = try DeviceSpec("sim:size=4M").makeSource()
        defer { device.close() }
        var config = MigrationConfiguration()
        config.transfer = options(connections: 1, timeout: .seconds(5))
        config.scheduler.deadline = .seconds(10)
        let report = MigrationSource(devices: [device], configuration: config, warn: { _ in })
            .migrate(to: Endpoint(host: "127.0.0.1", port: port))
        #expect(!report.completed)
        #expect(report.error?.code == .protocolViolation, "\(String(describing: report.error))")
        let expected = early == .loadStats ? "round 999 loaded before it was sent" : "\(early) out of order"
        #expect(report.error?.message.contains(expected) == true, "\(String(describing: report.error))")
        #expect(device.state == .running)
        #expect(report.error?.message.contains("RUNNING again on the source") == true)
    }

    @Test func aControlReplyToASourceThatStopsReadingTimesOut() {
        // A source that never reads: the destination's reply must fail within its timeout
        // instead of blocking the destination forever on a full socket buffer.
        var sv: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &sv) == 0)
        let connection = Connection(fd: sv[0])
        defer { connection.close(); close(sv[1]) }
        var small: Int32 = 4096
        setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        let replies = ControlReplies(connection: connection, timeout: .milliseconds(300))
        let t0 = Monotonic.now
        var caught: TransferError?
        do throws(TransferError) {
            for _ in 0..<100_000 { try replies.send(.loadStats, payload: LoadStats(loadedBytes: 1, bytesPerSecond: 2).encoded()) }
        } catch { caught = error }
        #expect(caught?.message.contains("has not read its socket") == true, "\(String(describing: caught))")
        #expect(Monotonic.now - t0 < .seconds(20))
    }
}
