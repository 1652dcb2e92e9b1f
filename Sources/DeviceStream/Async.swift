import DSSupport
import DSTransport

/// Runs a blocking session call on a thread of its own ("ds-session"), never on the cooperative
/// pool, and resumes the task with its report; cancelling the task cancels the session (which
/// before the commit point fails it, after it is too late and only reported).
private func offPool(cancel: @escaping @Sendable () -> Void,
                     _ body: @escaping @Sendable () -> MigrationReport) async -> MigrationReport {
    await withTaskCancellationHandler {
        await withCheckedContinuation { (continuation: CheckedContinuation<MigrationReport, Never>) in
            do {
                try OSThread(name: "ds-session") { continuation.resume(returning: body()) }.detach()
            } catch {
                var report = MigrationReport()
                report.error = TransferError(.localIO, "cannot start the session thread: \(error)", hint: "the process is out of threads or memory")
                continuation.resume(returning: report)
            }
        }
    } onCancel: {
        cancel()
    }
}

extension MigrationSource {
    /// `migrate(to:onEvent:)` for async code: the session runs on a dedicated thread, not the
    /// cooperative pool; cancelling the task cancels the migration.
    public func migrate(to endpoint: Endpoint, onEvent: @escaping @Sendable (MigrationEvent) -> Void = { _ in }) async -> MigrationReport {
        await offPool(cancel: { [self] in cancel() }) { [self] in migrate(to: endpoint, onEvent: onEvent) }
    }
}

extension MigrationDestination {
    /// `run(acceptTimeout:onEvent:)` for async code: the session runs on a dedicated thread, not
    /// the cooperative pool; cancelling the task cancels the session.
    public func run(acceptTimeout: Duration? = nil, onEvent: @escaping @Sendable (MigrationEvent) -> Void = { _ in }) async -> MigrationReport {
        await offPool(cancel: { [self] in cancel() }) { [self] in run(acceptTimeout: acceptTimeout, onEvent: onEvent) }
    }
}
