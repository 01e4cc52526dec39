#ifndef CQMP_SHIMS_H
#define CQMP_SHIMS_H

#include <dirent.h>
#include <stddef.h>
#include <poll.h>
#include <spawn.h>
#include <stdint.h>
#include <sys/types.h>

/// Sends `len` bytes with `nfds` file descriptors attached as one SCM_RIGHTS message.
/// Returns bytes sent or -1 with errno set. MSG_NOSIGNAL is always added to `flags`.
ssize_t cqmp_sendmsg_fds(int sock, const void *buf, size_t len, const int *fds, size_t nfds, int flags);

/// Receives up to `len` bytes and up to `maxfds` descriptors (MSG_CMSG_CLOEXEC).
/// `*nfds` receives the descriptor count; `*truncated` is 1 when the kernel reported MSG_CTRUNC
/// (descriptors beyond the buffer were closed by the kernel). Returns bytes read, 0 at EOF, -1 on error.
ssize_t cqmp_recvmsg_fds(int sock, void *buf, size_t len, int *fds, size_t maxfds, size_t *nfds, int *truncated);

/// posix_spawn_file_actions_addclosefrom_np (glibc 2.34+, a GNU extension Swift's Glibc module
/// does not show): the child closes every descriptor from `from` up before exec.
int cqmp_spawn_add_closefrom(posix_spawn_file_actions_t *actions, int from);

/// pidfd_open(2): syscall 434 on x86_64, no glibc wrapper. -1 with errno on failure.
int cqmp_pidfd_open(pid_t pid, unsigned int flags);

/// pidfd_getfd(2): duplicates `targetfd` of the process behind `pidfd` into this process.
int cqmp_pidfd_getfd(int pidfd, int targetfd, unsigned int flags);

/// eventfd(2) with EFD_CLOEXEC | EFD_NONBLOCK, used to wake the reactor from another thread.
int cqmp_eventfd(void);

/// memfd_create(2) with MFD_CLOEXEC: an anonymous file, shown in /proc/<pid>/fd as `/memfd:<name> (deleted)`.
int cqmp_memfd(const char *name);

/// The credentials of the peer of a connected unix socket (SO_PEERCRED). Returns 0, or -1 with errno.
int cqmp_peer_credentials(int sock, pid_t *pid, uid_t *uid, gid_t *gid);

/// Whether `pid` is an exited child of the caller, without reaping it (waitid WEXITED|WNOHANG|WNOWAIT).
/// Returns 1 with `*status` set to its exit status (128 + signal when killed), 0 while it runs, -1 with
/// errno when it is not a child (ECHILD).
int cqmp_child_exit_status(pid_t pid, int *status);

/// epoll_create1(EPOLL_CLOEXEC).
int cqmp_epoll_create(void);

/// Interest and ready bits of the epoll shims: the kernel's EPOLLIN, EPOLLOUT, EPOLLERR and EPOLLHUP (checked in shims.c).
#define CQMP_EPOLL_READ 0x001u
#define CQMP_EPOLL_WRITE 0x004u
#define CQMP_EPOLL_ERROR 0x008u
#define CQMP_EPOLL_HANGUP 0x010u

/// Brings `fd`'s epoll registration to `interest` (CQMP_EPOLL_READ | CQMP_EPOLL_WRITE, level
/// triggered, `token` as its data): added when not `registered`, modified when it is, deleted for an
/// empty interest (then not even hang-ups are reported). Returns what epoll_ctl(2) returns.
int cqmp_epoll_update(int epfd, int fd, uint64_t token, int registered, unsigned interest);

/// epoll_pwait2(2) with a timeout in nanoseconds (-1: wait forever), so timers keep sub-millisecond
/// precision; on kernels without it, epoll_wait(2) with the timeout rounded up to milliseconds.
/// Writes each ready event's CQMP_EPOLL_* bits and token; returns their count (-1 with errno, EINTR included).
int cqmp_epoll_wait_ns(int epfd, uint32_t *masks, uint64_t *tokens, int capacity, int64_t timeout_ns);

/// accept4(2) with SOCK_CLOEXEC | SOCK_NONBLOCK. The caller owns the returned descriptor.
int cqmp_accept(int sock);

/// pipe2(2) with O_CLOEXEC (and O_NONBLOCK when `nonblocking` is non-zero). Caller owns both ends.
int cqmp_pipe(int fds[2], int nonblocking);

/// pthread_setname_np(3) on the calling thread (name truncated to 15 bytes). Returns 0 or an errno.
int cqmp_set_thread_name(const char *name);

/// gettid(2): the kernel id of the calling thread (for /proc/self/task/TID).
pid_t cqmp_gettid(void);

/// Maximum descriptors accepted in one message (the kernel's SCM_MAX_FD).
#define CQMP_MAX_FDS 253

/// The name of the next entry of `dir` other than `.` and `..`, read in place (valid until the next
/// readdir/closedir of the stream: copying `dirent.d_name` into Swift reads past short records); NULL
/// at the end.
const char *cqmp_readdir_name(DIR *dir);

#endif
