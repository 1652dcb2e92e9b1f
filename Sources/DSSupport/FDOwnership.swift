/// Who closes a file descriptor handed to the library (a VFIO device fd, a connected socket).
public enum FDOwnership: Sendable, Equatable {
    /// The caller keeps the fd: the library never closes it, and the caller must keep it open
    /// until the object using it is closed.
    case borrowed
    /// The fd is the library's from the call on: it is closed when the object using it is
    /// closed, or before the initializer that took it throws.
    case owned
}
