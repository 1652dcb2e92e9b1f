import ArgumentParser
import DeviceStream
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
struct Devstream: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "devstream",
        abstract: "Move device state between hosts: point-to-point transfers and live migration.",
        subcommands: [Send.self, Receive.self, Migrate.self, Demo.self])
}

/// Options shared by the data-path commands.
struct DataPathOptions: ParsableArguments {
    @Option(help: "TCP connections (channels), each one thread, one io_uring, one socket.")
    var connections: Int = 2
    @Option(help: "Chunk compression: lz4 or none.")
    var compression: String = "lz4"
    @Option(help: "LZ4 acceleration (1 = best ratio; higher = faster).")
    var acceleration: Int = 1
    @Option(help: "Raw bytes per chunk (4K ... 16M).")
    var chunkSize: String = "1M"
    @Option(help: "Fail when the peer makes no progress for this long (e.g. 30s, 500ms).")
    var timeout: String = "30s"
    @Option(help: "The most the session's buffers may take, all connections together (about connections x (2 x chunk size + 1.3M with TLS)).")
    var memoryBudget: String = "256M"

    func transferOptions() throws -> TransferOptions {
        try makeTransferOptions(connections: connections, compression: compression, acceleration: acceleration,
                                chunkSize: chunkSize, timeout: timeout, memoryBudget: memoryBudget)
    }
}

func makeTransferOptions(connections: Int, compression: String, acceleration: Int = 1, chunkSize: String = "1M",
                         timeout: String = "30s", memoryBudget: String = "256M") throws -> TransferOptions {
    var o = TransferOptions()
    o.connections = connections
    switch compression {
    case "lz4": o.compression = true
    case "none": o.compression = false
    default: throw ValidationError("--compression must be lz4 or none, got '\(compression)'")
    }
    o.acceleration = acceleration
    o.chunkSize = Int(try OptionParsing.size(chunkSize, option: "--chunk-size"))
    o.timeout = try OptionParsing.duration(timeout, option: "--timeout")
    o.memoryBudget = Int(clamping: try OptionParsing.size(memoryBudget, option: "--memory-budget"))
    o.backend = try CLIEnvironment.backend()
    do { try o.validate() } catch { throw ValidationError(error) }
    return o
}

struct Send: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Send a file, a block device or stdin (-) to a receiver.")
    @Argument(help: "The file to send, or - for stdin.") var file: String
    @Option(help: "The receiver, HOST:PORT.") var to: String
    @OptionGroup var data: DataPathOptions
    @OptionGroup var security: SecurityFlags
    @Flag(help: "Print one JSON object on stdout at the end.") var json = false

    func run() throws {
        Terminal.ignoreSignals()
        var options = try data.transferOptions()
        let endpoint: Endpoint
        do { endpoint = try Endpoint.parse(to) } catch { throw ValidationError(error) }
        try security.apply(to: &options, endpoint: endpoint)
        let source: TransferSource
        do { source = try TransferSource(path: file) } catch {
            Report.fail(error, json: json, extra: ["connections": options.connections, "compression": data.compression,
                                                   "protection": options.protection.rawValue])
        }
        let progress = TransferProgress()
        let ticker = Terminal.progressTicker(progress, label: "send")
        let report = TransferSender.send(source, to: endpoint, options: options, progress: progress)
        ticker?.stop()
        Report.finish(report, json: json, verb: "sent", compressionName: data.compression)
    }
}

struct Receive: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Receive one transfer into a file (or -), or, with --device, one live migration.")
    @Option(help: "Where to listen, HOST:PORT (port 0 picks one; the first stdout line names it, or the first stderr line with --output -).") var listen: String
    @Option(help: "Output file, device, or - for stdout.") var output: String?
    @Option(help: "Destination device spec (repeatable), for a migration.") var device: [String] = []
    @Option(help: "Fail when the peer makes no progress for this long.") var timeout: String = "30s"
    @Option(help: "The most a session's buffers may take here: a sender asking for more (connections x chunk size) is refused.")
    var memoryBudget: String = "256M"
    @OptionGroup var security: SecurityFlags
    @Option(help: "Without --psk-file/--tls-*/--insecure: write the one-time key made for this receive to FILE (default: devstream-PORT.key in the working directory); removed when the receive ends.")
    var keyOut: String?
    @Flag(help: "Print one JSON object on stdout at the end (on stderr with --output -).") var json = false

    func run() throws {
        Terminal.ignoreSignals()
        let endpoint: Endpoint
        do { endpoint = try Endpoint.parse(listen) } catch { throw ValidationError(error) }
        var options = TransferOptions()
        options.timeout = try OptionParsing.duration(timeout, option: "--timeout")
        options.memoryBudget = Int(clamping: try OptionParsing.size(memoryBudget, option: "--memory-budget"))
        options.backend = try CLIEnvironment.backend()
        let oneTimeKey = try ReceiverKey.make(security, keyOut: keyOut)
        if let oneTimeKey { options.security = oneTimeKey } else { try security.apply(to: &options, endpoint: endpoint) }
        if !device.isEmpty {
            guard output == nil else { throw ValidationError("give either --output (a transfer) or --device (a migration), not both") }
            try MigrationCLI.receive(endpoint: endpoint, devices: device, options: options, oneTimeKey: oneTimeKey.map { ($0, keyOut) }, json: json)
            return
        }
        guard let output else { throw ValidationError("--output FILE (or -) is required, or --device SPEC for a migration") }
        // With `--output -` stdout is the data (QEMU's `-incoming exec:` reads it): every line
        // of ours, the listening line and the JSON report included, goes to stderr.
        let stdoutIsData = output == "-"
        let receiver: TransferReceiver
        let key: ReceiverKey?
        do {
            receiver = try TransferReceiver(listen: endpoint, options: options)
            key = try oneTimeKey.map { (o) throws(TransferError) in try ReceiverKey.write(o, to: keyOut, listening: receiver.listener.endpoint) }
        } catch {
            Report.fail(error, json: json, extra: ["protection": options.protection.rawValue], stdoutIsData: stdoutIsData)
        }
        Terminal.announce("listening on \(receiver.listener.endpoint)", toStderr: stdoutIsData)
        key?.announce(sendVerb: "send")
        let ticker = Terminal.progressTicker(receiver.progress, label: "receive")
        let report = receiver.receive(output: output)
        ticker?.stop()
        key?.remove()
        Report.finish(report, json: json, verb: "received", compressionName: report.compression ? "lz4" : "none",
                      stdoutIsData: stdoutIsData)
    }
}
