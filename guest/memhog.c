/*
 * memhog: the aerostat test guest's memory workload (built static into the initramfs).
 *
 *   memhog SIZE_MIB [--dirty] [--rate MIB_PER_S] [--hold SECONDS] [--lock] [--replace] [--quiet]
 *
 * Allocates SIZE_MIB MiB of anonymous memory, touches every page (each page gets a distinct,
 * non-zero word, so neither the zero-page checks of migration nor KSM can drop it), then holds
 * it until killed, or for SECONDS with --hold. The mapping is MAP_NORESERVE: a size above what
 * the guest has is not refused up front (heuristic overcommit would), it ends in the OOM killer
 * while touching, as a real workload would.
 *
 *   --dirty      after the first pass, keep rewriting every page continuously (live-migration
 *                tests); prints a line about every 5 s. Dirtying means writing one word in
 *                each 4 KiB page, so the rate is counted in MiB of pages made dirty.
 *   --rate R     with --dirty: dirty at most R MiB of pages per second (default: as fast as
 *                the CPU goes).
 *   --hold S     exit 0 after S seconds (counted from when the memory is touched); default:
 *                hold forever.
 *   --lock       mlock() the memory, so a balloon cannot take it back.
 *   --replace    first SIGTERM every other running memhog and wait until it has exited
 *                (a simple way to "resize": start a new memhog with the new size).
 *   --quiet      no progress lines, only the "holding" and exit lines.
 *
 * Output (line-buffered on stdout):
 *   memhog: pid P allocating N MiB
 *   memhog: touched M MiB            (every 64 MiB, and at the end)
 *   memhog: holding N MiB pid P      (the workload is in place: wait for this line)
 *   memhog: dirty pass K, X MiB/s    (--dirty)
 *   memhog: exiting (REASON)         (SIGTERM/SIGINT or --hold elapsed)
 * Exit codes: 0 normal (signal or --hold), 1 allocation/mlock failure, 2 usage.
 * SIGTERM and SIGINT end it cleanly (memory is unmapped, exit 0).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop_sig;

static void on_signal(int sig) { stop_sig = sig; }

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: memhog SIZE_MIB [--dirty] [--rate MIB_PER_S] [--hold SECONDS] [--lock]"
            " [--replace] [--quiet]\n");
    exit(2);
}

/* Is pid a live (non-zombie) process whose comm is "memhog"? */
static int is_live_memhog(pid_t pid)
{
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *l = strchr(buf, '('), *r = strrchr(buf, ')');
    if (!l || !r || r < l)
        return 0;
    *r = 0;
    if (strcmp(l + 1, "memhog") != 0)
        return 0;
    return r[1] == ' ' && r[2] != 'Z' && r[2] != 'X';
}

/* SIGTERM every other memhog, wait up to 30 s for them to be gone (zombies count as gone). */
static void replace_others(void)
{
    pid_t self = getpid();
    pid_t pids[256];
    int n = 0;
    DIR *d = opendir("/proc");
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) && n < 256) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end || pid <= 0 || pid == self)
            continue;
        if (is_live_memhog((pid_t)pid)) {
            pids[n++] = (pid_t)pid;
            kill((pid_t)pid, SIGTERM);
            printf("memhog: replacing pid %ld\n", pid);
        }
    }
    closedir(d);
    double deadline = now() + 30;
    for (int i = 0; i < n; i++) {
        while (is_live_memhog(pids[i]) && now() < deadline)
            usleep(20000);
        if (is_live_memhog(pids[i])) {
            kill(pids[i], SIGKILL);
            fprintf(stderr, "memhog: pid %d did not exit, sent SIGKILL\n", (int)pids[i]);
        }
    }
}

int main(int argc, char **argv)
{
    long size_mib = -1;
    int dirty = 0, lock = 0, replace = 0, quiet = 0;
    double hold = -1, rate = 0;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--dirty"))
            dirty = 1;
        else if (!strcmp(a, "--lock"))
            lock = 1;
        else if (!strcmp(a, "--replace"))
            replace = 1;
        else if (!strcmp(a, "--quiet"))
            quiet = 1;
        else if (!strcmp(a, "--hold")) {
            if (++i >= argc)
                usage();
            char *end;
            hold = strtod(argv[i], &end);
            if (*end || hold < 0)
                usage();
        } else if (!strcmp(a, "--rate")) {
            if (++i >= argc)
                usage();
            char *end;
            rate = strtod(argv[i], &end);
            if (*end || rate <= 0)
                usage();
        } else if (a[0] != '-' && size_mib < 0) {
            char *end;
            size_mib = strtol(a, &end, 10);
            if (*end || size_mib < 0)
                usage();
        } else
            usage();
    }
    if (size_mib < 0)
        usage();

    setvbuf(stdout, NULL, _IOLBF, 0);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: interrupts sleeps */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    /* A job started with '&' by a non-interactive shell has SIGINT ignored: keep it so. */
    struct sigaction old;
    if (sigaction(SIGINT, NULL, &old) == 0 && old.sa_handler != SIG_IGN)
        sigaction(SIGINT, &sa, NULL);

    if (replace)
        replace_others();

    pid_t pid = getpid();
    printf("memhog: pid %d allocating %ld MiB\n", (int)pid, size_mib);

    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t len = (size_t)size_mib << 20;
    unsigned char *buf = NULL;
    if (len) {
        buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (buf == MAP_FAILED) {
            fprintf(stderr, "memhog: mmap %ld MiB: %s\n", size_mib, strerror(errno));
            return 1;
        }
    }

    /* First pass: touch every page, report every 64 MiB. */
    uint64_t gen = 1;
    for (size_t off = 0; off < len && !stop_sig; off += page) {
        *(volatile uint64_t *)(buf + off) = (off / page) * 2654435761u + gen;
        size_t done = off + page;
        if (done % ((size_t)64 << 20) == 0 && done < len && !quiet)
            printf("memhog: touched %zu MiB\n", done >> 20);
    }
    if (!stop_sig && !quiet)
        printf("memhog: touched %ld MiB\n", size_mib);

    if (!stop_sig && lock && len) {
        if (mlock(buf, len) != 0) {
            fprintf(stderr, "memhog: mlock %ld MiB: %s\n", size_mib, strerror(errno));
            munmap(buf, len);
            return 1;
        }
    }
    if (!stop_sig)
        printf("memhog: holding %ld MiB pid %d%s%s\n", size_mib, (int)pid,
               lock ? " locked" : "", dirty ? " dirtying" : "");

    double t_start = now();
    double deadline = hold >= 0 ? t_start + hold : -1;
    const char *reason = NULL;

    if (dirty && len) {
        double t_report = t_start;
        uint64_t passes = 0, bytes = 0, total = 0;
        while (!stop_sig) {
            gen++;
            for (size_t off = 0; off < len; off += page) {
                *(volatile uint64_t *)(buf + off) = (off / page) * 2654435761u + gen;
                /* check the clock / signals every 4 MiB */
                if ((off & (((size_t)4 << 20) - 1)) == 0 && off) {
                    if (stop_sig)
                        break;
                    if (deadline >= 0 && now() >= deadline)
                        break;
                    if (rate > 0) {
                        /* pace: total+off bytes should take (total+off)/rate seconds */
                        double due = t_start + (double)(total + off) / (rate * (1 << 20));
                        double ahead = due - now();
                        if (ahead > 0) {
                            struct timespec ts = {(time_t)ahead,
                                                  (long)((ahead - (time_t)ahead) * 1e9)};
                            nanosleep(&ts, NULL);
                        }
                    }
                }
            }
            passes++;
            bytes += len;
            total += len;
            double t = now();
            if (deadline >= 0 && t >= deadline) {
                reason = "hold elapsed";
                break;
            }
            if (t - t_report >= 5) {
                if (!quiet)
                    printf("memhog: dirty pass %llu, %.0f MiB/s\n", (unsigned long long)passes,
                           bytes / (t - t_report) / (1 << 20));
                t_report = t;
                bytes = 0;
            }
        }
    } else {
        while (!stop_sig) {
            if (deadline >= 0) {
                double left = deadline - now();
                if (left <= 0) {
                    reason = "hold elapsed";
                    break;
                }
                struct timespec ts = {(time_t)left, (long)((left - (time_t)left) * 1e9)};
                nanosleep(&ts, NULL);
            } else {
                pause();
            }
        }
    }

    if (stop_sig)
        reason = stop_sig == SIGTERM ? "SIGTERM" : "SIGINT";
    if (len)
        munmap(buf, len);
    printf("memhog: exiting (%s)\n", reason ? reason : "done");
    return 0;
}
