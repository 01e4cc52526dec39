#define _GNU_SOURCE
#include "CQMPShims.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <spawn.h>
#include <time.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

/* Control data with room for the largest fd batch, aligned as a cmsghdr must be. */
typedef union {
    char buf[CMSG_SPACE(sizeof(int) * CQMP_MAX_FDS)];
    struct cmsghdr align;
} fd_control;

/* A zeroed msghdr over the one buffer `iov`, without control data yet. */
static struct msghdr one_buffer_msghdr(struct iovec *iov) {
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    return msg;
}

ssize_t cqmp_sendmsg_fds(int sock, const void *buf, size_t len, const int *fds, size_t nfds, int flags) {
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    struct msghdr msg = one_buffer_msghdr(&iov);
    fd_control control;
    if (nfds > 0) {
        if (nfds > CQMP_MAX_FDS) {
            errno = EINVAL;
            return -1;
        }
        memset(&control, 0, sizeof(control));
        msg.msg_control = control.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * nfds);
    }
    return sendmsg(sock, &msg, flags | MSG_NOSIGNAL);
}

ssize_t cqmp_recvmsg_fds(int sock, void *buf, size_t len, int *fds, size_t maxfds, size_t *nfds, int *truncated) {
    struct iovec iov = {.iov_base = buf, .iov_len = len};
    struct msghdr msg = one_buffer_msghdr(&iov);
    fd_control control;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof(control.buf);
    *nfds = 0;
    *truncated = 0;
    ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0) {
        return n;
    }
    if (msg.msg_flags & MSG_CTRUNC) {
        *truncated = 1;
    }
    for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg); cmsg != NULL; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
        if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) {
            continue;
        }
        size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *data = (int *)CMSG_DATA(cmsg);
        for (size_t i = 0; i < count; i++) {
            if (*nfds < maxfds) {
                fds[(*nfds)++] = data[i];
            } else {
                close(data[i]);
                *truncated = 1;
            }
        }
    }
    return n;
}

int cqmp_pidfd_open(pid_t pid, unsigned int flags) {
    return (int)syscall(SYS_pidfd_open, pid, flags);
}

int cqmp_pidfd_getfd(int pidfd, int targetfd, unsigned int flags) {
    return (int)syscall(SYS_pidfd_getfd, pidfd, targetfd, flags);
}

int cqmp_eventfd(void) {
    return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
}

int cqmp_memfd(const char *name) {
    return memfd_create(name, MFD_CLOEXEC);
}

int cqmp_peer_credentials(int sock, pid_t *pid, uid_t *uid, gid_t *gid) {
    struct ucred cred;
    socklen_t size = sizeof(cred);
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &size) != 0) {
        return -1;
    }
    *pid = cred.pid;
    *uid = cred.uid;
    *gid = cred.gid;
    return 0;
}

int cqmp_child_exit_status(pid_t pid, int *status) {
    siginfo_t info;
    memset(&info, 0, sizeof(info));
    if (waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG | WNOWAIT) != 0) {
        return -1;
    }
    if (info.si_pid == 0) {
        return 0;
    }
    *status = info.si_code == CLD_EXITED ? info.si_status : 128 + info.si_status;
    return 1;
}

int cqmp_spawn_add_closefrom(posix_spawn_file_actions_t *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
}

int cqmp_epoll_create(void) {
    return epoll_create1(EPOLL_CLOEXEC);
}

// The CQMP_EPOLL_* bits are the kernel's: events pass through without translation.
_Static_assert(CQMP_EPOLL_READ == EPOLLIN && CQMP_EPOLL_WRITE == EPOLLOUT && CQMP_EPOLL_ERROR == EPOLLERR &&
                   CQMP_EPOLL_HANGUP == EPOLLHUP,
               "CQMP_EPOLL_* must equal the kernel's EPOLL* bits");

int cqmp_epoll_update(int epfd, int fd, uint64_t token, int registered, unsigned interest) {
    if (interest == 0) {
        return registered ? epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL) : 0;
    }
    struct epoll_event event = {.events = interest & (CQMP_EPOLL_READ | CQMP_EPOLL_WRITE), .data.u64 = token};
    return epoll_ctl(epfd, registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &event);
}

// Out of line: the untimed wait, the one an idle or busy proxy makes, stays short.
__attribute__((noinline)) static int epoll_wait_timed(int epfd, struct epoll_event *events, int capacity,
                                                      int64_t timeout_ns) {
    struct timespec ts = {.tv_sec = (time_t)(timeout_ns / 1000000000), .tv_nsec = (long)(timeout_ns % 1000000000)};
    int count;
#ifdef SYS_epoll_pwait2
    count = (int)syscall(SYS_epoll_pwait2, epfd, events, capacity, &ts, NULL, 0);
#else
    count = -1;
    errno = ENOSYS;
#endif
    if (count < 0 && errno == ENOSYS) {
        int64_t ms = (timeout_ns + 999999) / 1000000;
        count = epoll_wait(epfd, events, capacity, ms > INT32_MAX ? INT32_MAX : (int)ms);
    }
    return count;
}

int cqmp_epoll_wait_ns(int epfd, uint32_t *masks, uint64_t *tokens, int capacity, int64_t timeout_ns) {
    struct epoll_event events[64];
    if (capacity > 64) capacity = 64;
    int count = timeout_ns < 0 ? epoll_wait(epfd, events, capacity, -1)
                               : epoll_wait_timed(epfd, events, capacity, timeout_ns);
    for (int i = 0; i < count; i++) {
        masks[i] = events[i].events & (CQMP_EPOLL_READ | CQMP_EPOLL_WRITE | CQMP_EPOLL_HANGUP | CQMP_EPOLL_ERROR);
        tokens[i] = events[i].data.u64;
    }
    return count;
}

int cqmp_accept(int sock) {
    return accept4(sock, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
}

int cqmp_pipe(int fds[2], int nonblocking) {
    return pipe2(fds, O_CLOEXEC | (nonblocking ? O_NONBLOCK : 0));
}

int cqmp_set_thread_name(const char *name) {
    char buf[16];
    strncpy(buf, name, sizeof(buf) - 1);
    buf[sizeof(buf) - 1] = 0;
    return pthread_setname_np(pthread_self(), buf);
}

pid_t cqmp_gettid(void) {
    return (pid_t)syscall(SYS_gettid);
}

const char *cqmp_readdir_name(DIR *dir) {
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        const char *name = entry->d_name;
        if (!(name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0)))) return name;
    }
    return NULL;
}
