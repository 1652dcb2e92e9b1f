import Testing
import Foundation
import Glibc

/// The README's embedding example: two programs, one per role (Sources/example-source and
/// Sources/example-destination), built with the package. The README must show them as they are,
/// and they must migrate a state file over TLS on loopback with a key the destination makes.
@Suite struct EmbeddingExampleTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static var binaries: URL { URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent() }

    @Test(arguments: ["example-source", "example-destination"])
    func theReadmeShowsTheProgramAsItIs(name: String) throws {
        let readme = try String(contentsOf: Self.root.appendingPathComponent("README.md"), encoding: .utf8)
        let source = try String(contentsOf: Self.root.appendingPathComponent("Sources/\(name)/main.swift"), encoding: .utf8)
        let marker = "<!-- Sources/\(name)/main.swift -->\n```swift\n"
        let start = try #require(readme.range(of: marker), "README has no block marked \(marker)")
        let end = try #require(readme.range(of: "```\n", range: start.upperBound..<readme.endIndex))
        #expect(String(readme[start.upperBound..<end.lowerBound]) == source)
    }

    @Test func theExampleMigratesAStateFile() throws {
        let dir = "/tmp/ds-example-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var state = [UInt8](repeating: 0, count: 6 << 20)
        for i in state.indices { state[i] = UInt8(truncatingIfNeeded: i &* 2654435761 >> 13) }
        #expect(FileManager.default.createFile(atPath: "\(dir)/state.img", contents: Data(state)))

        let destination = Process(), dout = Pipe()
        destination.executableURL = Self.binaries.appendingPathComponent("example-destination")
        destination.arguments = ["127.0.0.1:0", "\(dir)/key", "\(dir)/state.out"]
        destination.standardOutput = dout
        try destination.run()
        defer { if destination.isRunning { destination.terminate() } }
        // The first line says where it listens (port 0 picked one).
        var line = [UInt8]()
        while let b = try dout.fileHandleForReading.read(upToCount: 1), let c = b.first, c != 10 { line.append(c) }
        let first = String(decoding: line, as: UTF8.self)
        #expect(first.hasPrefix("listening on 127.0.0.1:"), "\(first)")
        let endpoint = String(first.dropFirst("listening on ".count))
        // The key the destination made: owner-only.
        var st = stat()
        #expect(stat("\(dir)/key", &st) == 0 && st.st_mode & 0o777 == 0o600)

        let source = Process(), sout = Pipe()
        source.executableURL = Self.binaries.appendingPathComponent("example-source")
        source.arguments = [endpoint, "\(dir)/key", "\(dir)/state.img"]
        source.standardOutput = sout
        try source.run()
        let sourceText = String(decoding: sout.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        source.waitUntilExit()
        let destinationText = String(decoding: dout.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        destination.waitUntilExit()
        #expect(source.terminationStatus == 0, "\(sourceText)")
        #expect(destination.terminationStatus == 0, "\(destinationText)")
        #expect(sourceText.contains("digests equal: true"), "\(sourceText)")
        #expect(destinationText.contains("handover: running"))
        #expect(FileManager.default.contents(atPath: "\(dir)/state.out") == Data(state))
    }
}
