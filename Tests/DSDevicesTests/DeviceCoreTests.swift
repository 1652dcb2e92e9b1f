import Synchronization
import Testing
@testable import DSDevices
import DSTestSupport

/// Records what `DeviceCore.transition` asks of an activity, with the state the core held then.
final class RecordingActivity: DeviceActivity {
    let calls = Mutex<[String]>([])
    func pause() { calls.withLock { $0.append("pause") } }
    func resume() { calls.withLock { $0.append("resume") } }
    var log: [String] { calls.withLock { $0 } }
}

@Suite struct DeviceCoreTests {
    static let preCopyFlags: VFIOMigrationFlags = [.stopCopy, .preCopy]

    @Test func transitionWalksArcsAndQuiescesTheActivityOutsideRunningStates() throws {
        let core = DeviceCore(name: "test device", flags: Self.preCopyFlags, state: .running, inner: [String]())
        let activity = RecordingActivity()
        try core.transition(to: .stopCopy, activity: activity) { arc, locked in
            #expect(locked.state == arc.from)
            locked.inner.append("\(arc.from)->\(arc.to)\(arc.startsSaving ? " saving" : "")")
        }
        // RUNNING -> STOP -> STOP_COPY (RUNNING_P2P is skipped without P2P).
        #expect(core.withLock { $0.inner } == ["RUNNING->STOP", "STOP->STOP_COPY saving"])
        #expect(core.state == .stopCopy)
        #expect(activity.log == ["pause"])
        try core.transition(to: .running, activity: activity) { _, _ in }
        #expect(core.state == .running)
        #expect(activity.log == ["pause", "resume"])
        try core.transition(to: .preCopy, activity: activity) { _, _ in }  // running -> running: untouched
        #expect(activity.log == ["pause", "resume"])
    }

    @Test func failedArcKeepsWhatTheArcLeft() throws {
        let core = DeviceCore(name: "test device", flags: Self.preCopyFlags, state: .running, inner: 0)
        let activity = RecordingActivity()
        // A failure on RUNNING -> STOP leaves RUNNING, so the paused activity runs again.
        expectError(.io, "disk on fire") {
            try core.transition(to: .stop, activity: activity) { (_, _) throws(DeviceError) in
                throw DeviceError(.io, "disk on fire")
            }
        }
        #expect(core.state == .running)
        #expect(activity.log == ["pause", "resume"])
        // An arc may leave ERROR (a driver that failed to restore); later arcs do not run.
        let resuming = DeviceCore(name: "test device", flags: Self.preCopyFlags, state: .resuming, inner: 0)
        expectError(.malformedStream) {
            try resuming.transition(to: .running) { (arc, locked) throws(DeviceError) in
                locked.inner += 1
                #expect(arc.leavesResuming)
                locked.state = .error
                throw DeviceError(.malformedStream, "bad stream")
            }
        }
        #expect(resuming.state == .error)
        #expect(resuming.withLock { $0.inner } == 1)
        expectError(.blockedTransition, "reset it (VFIO_DEVICE_RESET)") { try resuming.transition(to: .stop) { _, _ in } }
    }

    @Test func blockedTransitionTouchesNothingAndSaysWhy() throws {
        let core = DeviceCore(name: "test device", flags: [.stopCopy], state: .running, inner: 0)
        let activity = RecordingActivity()
        let err = expectError(.blockedTransition, "test device: the VFIO migration state machine has no path from RUNNING to PRE_COPY") {
            try core.transition(to: .preCopy, activity: activity) { _, _ in Issue.record("no arc may run") }
        }
        #expect(err?.message.contains("does not support PRE_COPY") == true)
        expectError(.blockedTransition, "ERROR cannot be requested") { try core.transition(to: .error) { _, _ in } }
        #expect(core.state == .running && activity.log.isEmpty)
    }

    /// A device without P2P was said to allow reading in PRE_COPY_P2P; the message now lists
    /// only the states the device's flags support.
    @Test func stateMessagesListOnlySupportedStates() {
        let sim = DeviceCore(name: "sim device", flags: Self.preCopyFlags, state: .running, inner: 0)
        let err = expectError(.invalidState, "sim device: cannot read migration data in state RUNNING; allowed in PRE_COPY and STOP_COPY") {
            _ = try sim.withOpen(for: .save) { _ in 0 }
        }
        #expect(err?.message.contains("P2P") == false)
        let all = DeviceCore(name: "p2p device", flags: [.stopCopy, .preCopy, .p2p], state: .running, inner: 0)
        expectError(.invalidState, "allowed in PRE_COPY, PRE_COPY_P2P and STOP_COPY") {
            _ = try all.withOpen(for: .save) { _ in 0 }
        }
        expectError(.invalidState, "cannot write migration data in state RUNNING; allowed in RESUMING only") {
            _ = try all.withOpen(for: .load) { _ in 0 }
        }
        let file = DeviceCore(name: "file device", flags: [.stopCopy], state: .running, inner: 0)
        expectError(.invalidState, "a device with migration flags STOP_COPY has no state that allows it") {
            try file.check(file.state, in: [.preCopy, .preCopyP2P], to: "report pre-copy info")
        }
    }

    @Test func closeRunsOnceAndThenEverythingRefuses() throws {
        let core = DeviceCore(name: "test device", flags: Self.preCopyFlags, state: .resuming, inner: 0)
        #expect(try core.withOpen(for: .load) { locked in locked.inner } == 0)
        core.close { $0 += 1 }
        core.close { $0 += 1 }
        #expect(core.withLock { $0.inner } == 1)
        expectError(.invalidState, "test device: the device is closed") { _ = try core.withOpen { _ in 0 } }
        expectError(.invalidState, "closed") { try core.transition(to: .stop) { _, _ in } }
        expectError(.invalidState, "closed") { _ = try core.saveConfig { _ in [] } }
    }

    @Test func configBlobChecksMagicVersionAndSize() throws {
        let blob = ConfigBlob(magic: 0x4746_434D_4953_5344, version: 1, count: 32, kind: "sim device")
        #expect(blob.magicText == "DSSIMCFG")
        var good = blob.head(size: 4096)
        #expect(good.count == 24 && Array(good[0 ..< 8]) == Array("DSSIMCFG".utf8))
        good.appendLE(UInt64(7))
        try blob.check(good, size: 4096, device: "sim device")
        expectError(.malformedStream, "the config is for a device of 4096 bytes but this device has 8192") {
            try blob.check(good, size: 8192, device: "sim device")
        }
        var badVersion = good
        badVersion[8] = 2
        expectError(.malformedStream, "is not a sim device config (32 bytes: magic DSSIMCFG, version 1, size)") {
            try blob.check(badVersion, size: 4096, device: "sim device")
        }
        expectError(.malformedStream, "a config of 3 bytes") { try blob.check([1, 2, 3], size: 4096, device: "sim device") }

        // A destination reports the config it loaded, and loads one in RESUMING only.
        let core = DeviceCore(name: "sim device", flags: Self.preCopyFlags, state: .resuming, inner: 0)
        #expect(try core.saveConfig { _ in [9] } == [9])
        try core.loadConfig(good, format: blob, size: 4096)
        #expect(try core.saveConfig { _ in [9] } == good)
        try core.transition(to: .stop) { _, _ in }
        expectError(.invalidState, "cannot load a config in state STOP; allowed in RESUMING only") {
            try core.loadConfig(good, format: blob, size: 4096)
        }
    }
}
