import ArgumentParser
import DeviceStream

struct Migrate: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Live-migrate devices to a receiver (devstream receive --device).")
    func run() throws { throw ValidationError("migrate: not built yet") }
}

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "A whole live migration of a simulated device over loopback.")
    func run() throws { throw ValidationError("demo: not built yet") }
}

enum MigrationCLI {
    static func receive(endpoint: Endpoint, devices: [String], options: TransferOptions, json: Bool) throws {
        throw ValidationError("receive --device: not built yet")
    }
}
