// Temporary: replaced by VFIOStateMachine.swift (the kernel FSM port).
public enum VFIODeviceState: UInt32, Sendable, CaseIterable { case error = 0, stop = 1, running = 2, stopCopy = 3, resuming = 4, runningP2P = 5, preCopy = 6, preCopyP2P = 7 }
public struct VFIOMigrationFlags: OptionSet, Sendable { public let rawValue: UInt64; public init(rawValue: UInt64) { self.rawValue = rawValue } }
