import Foundation
import Testing
@testable import DSDevices
import DSTestSupport

@Suite struct FileDeviceTests {
    static func tempPath(_ name: String) -> String {
        NSTemporaryDirectory() + "ds-file-\(getpid())-\(name)"
    }

    /// Seeded bytes for a file's content.
    static func content(_ count: Int, seed: UInt64) -> [UInt8] {
        var rng = TestRNG(seed)
        return (0 ..< count).map { i in i % 4096 < 1024 ? 0 : UInt8(truncatingIfNeeded: rng.next()) }
    }

    @Test func roundTrip() throws {
        let srcPath = Self.tempPath("src"), dstPath = Self.tempPath("dst")
        defer { unlink(srcPath); unlink(dstPath) }
        let content = Self.content((3 << 20) + 1234, seed: 11)
        #expect(FileManager.default.createFile(atPath: srcPath, contents: Data(content)))
        let src = try FileDevice(sourcePath: srcPath)
        #expect(src.size == UInt64(content.count))
        #expect(src.migrationFlags == [.stopCopy])
        #expect(src.state == .running)
        let dst = try FileDevice(destinationPath: dstPath, size: src.size)
        defer { src.close(); dst.close() }
        #expect(dst.state == .resuming)
        try src.setState(.stopCopy)
        var chunks: [UInt64] = []
        try src.takeDirtyChunks(into: &chunks)
        #expect(chunks == [0, 1, 2, 3])
        var none: [UInt64] = []
        try src.takeDirtyChunks(into: &none)
        #expect(none.isEmpty)
        #expect(try copyChunks(chunks, from: src, to: dst) == content.count)
        try dst.loadConfig(try src.saveConfig())
        try dst.setState(.stop)
        try dst.setState(.running)
        let expected = content.withUnsafeBytes { xxh3($0.baseAddress, $0.count) }
        #expect(try src.digest() == expected)
        #expect(try dst.digest() == expected)
        #expect(try Data(contentsOf: URL(fileURLWithPath: dstPath)) == Data(content))
    }

    /// A destination file is written as PATH.partial and becomes PATH only at RUNNING; a
    /// destination closed before that (a failed migration) leaves neither.
    @Test func destinationIsPartialUntilRunning() throws {
        let path = Self.tempPath("dst-partial")
        defer { unlink(path); unlink(path + ".partial") }
        let failed = try FileDevice(destinationPath: path, size: 1 << 20)
        #expect(access(path + ".partial", F_OK) == 0 && access(path, F_OK) != 0)
        failed.close()
        #expect(access(path + ".partial", F_OK) != 0 && access(path, F_OK) != 0)

        let ok = try FileDevice(destinationPath: path, size: 8192)
        let src = Self.tempPath("dst-partial-src")
        defer { unlink(src) }
        #expect(FileManager.default.createFile(atPath: src, contents: Data(repeating: 9, count: 8192)))
        let s = try FileDevice(sourcePath: src)
        defer { s.close() }
        try ok.loadConfig(try s.saveConfig())
        try ok.setState(.stop)
        #expect(access(path, F_OK) != 0, "not PATH before RUNNING")
        try ok.setState(.running)
        ok.close()
        #expect(access(path, F_OK) == 0 && access(path + ".partial", F_OK) != 0)
    }

    /// The source's size is bounded by the free space, and a symlinked PATH.partial is refused
    /// without writing through it.
    @Test func destinationRefusesHugeSizesAndSymlinks() throws {
        let path = Self.tempPath("dst-hostile"), victim = Self.tempPath("victim")
        defer { unlink(path); unlink(path + ".partial"); unlink(victim) }
        expectError(.io, "are free") { _ = try FileDevice(destinationPath: path, size: 1 << 62) }
        #expect(access(path + ".partial", F_OK) != 0 && access(path, F_OK) != 0)
        #expect(FileManager.default.createFile(atPath: victim, contents: Data("keep".utf8)))
        #expect(symlink(victim, path + ".partial") == 0)
        expectError(.io, "not a leftover of ours") { _ = try FileDevice(destinationPath: path, size: 4096) }
        #expect(try Data(contentsOf: URL(fileURLWithPath: victim)) == Data("keep".utf8))
    }

    @Test func errors() throws {
        let path = Self.tempPath("err")
        defer { unlink(path) }
        #expect(FileManager.default.createFile(atPath: path, contents: Data(count: 8192)))
        let src = try FileDevice(sourcePath: path)
        defer { src.close() }
        expectError(.blockedTransition, "from RUNNING to PRE_COPY") { try src.setState(.preCopy) }
        expectError(.invalidState, "allowed in STOP_COPY only") { _ = try src.dataFD(for: .save) }
        expectError(.invalidState) { _ = try src.precopyInfo() }
        expectError(.io, "No such file") { _ = try FileDevice(sourcePath: path + "-missing") }
        let dst = try FileDevice(destinationPath: path + "-dst", size: 4096)
        defer { dst.close(); unlink(path + "-dst") }
        expectError(.malformedStream, "8192") { try dst.loadConfig(try src.saveConfig()) }
        expectError(.invalidState, "state RESUMING") { _ = try dst.dataFD(for: .save) }
    }
}
