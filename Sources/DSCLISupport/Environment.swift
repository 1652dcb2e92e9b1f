import ArgumentParser
import DeviceStream
import Glibc

/// The environment variables the CLIs read (the library reads none: each becomes an option of
/// the session the CLI builds).
package enum CLIEnvironment {
    /// `DEVSTREAM_IO_BACKEND=blocking` forces blocking syscalls (tests set it); `io_uring`
    /// requires io_uring (a session then fails if no ring can be set up). Unset or empty: the
    /// library's probe decides.
    package static let backendKey = "DEVSTREAM_IO_BACKEND"

    /// The backend `DEVSTREAM_IO_BACKEND` asks for, for `TransferOptions.backend`.
    /// - Throws: a `ValidationError` naming the variable for any other value.
    package static func backend() throws -> IOBackendKind? {
        guard let raw = getenv(backendKey).map({ String(cString: $0) }), !raw.isEmpty else { return nil }
        guard let kind = IOBackendKind(rawValue: raw) else {
            throw ValidationError("\(backendKey) must be io_uring or blocking, got '\(raw)'")
        }
        return kind
    }
}
