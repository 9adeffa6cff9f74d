/* Dynamic instruction counts of an emulated process, per guest instruction, for
 * `tvmshuffle deploy --count-instructions` (tvmshuffle/insncount.py reads the output).
 *
 * A qemu-user TCG plugin, built by `rpc/emu_arm64.sh setup` against the qemu-plugin.h of
 * Debian's source package of the installed qemu (nothing of qemu's is kept here):
 *
 *   qemu-aarch64 -plugin libinsncount.so,out=FILE ...
 *
 * Every translated block gets one inline counter (an add per execution of the block, no call
 * into the plugin), and the plugin keeps each block's instruction addresses and encodings. A
 * translated block is straight-line code entered at its top and left at its end, so each of its
 * instructions ran as often as the block. Counting spans a window the guest marks with a
 * syscall nobody else makes: getpriority(PRIO_PROCESS, MARK_START) zeroes every counter,
 * getpriority(PRIO_PROCESS, MARK_STOP) writes "vaddr encoding count" lines (hex, hex, decimal),
 * one per instruction of every block that ran, to FILE (a block translated twice appears twice:
 * the reader adds them up). Classifying the encodings and naming the functions is the reader's.
 *
 * Counters are plain adds: exact for a single-threaded guest (the counting run uses one
 * thread), approximate if several guest threads run one block at once.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

#define AARCH64_GETPRIORITY 141
#define MARK_START 0x74736330u /* "tsc0" */
#define MARK_STOP 0x74736331u  /* "tsc1" */

struct block {
    uint64_t count;
    uint64_t vaddr;
    size_t n;
    uint32_t *encoding;
    struct block *next;
};

static struct block *blocks;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char *out_path;
static int written;

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    struct block *b = calloc(1, sizeof(*b));
    if (!b) {
        return;
    }
    b->encoding = calloc(n ? n : 1, sizeof(uint32_t));
    if (!b->encoding) {
        free(b);
        return;
    }
    b->vaddr = qemu_plugin_tb_vaddr(tb);
    b->n = n;
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint32_t word = 0;
        size_t size = qemu_plugin_insn_size(insn);
        memcpy(&word, qemu_plugin_insn_data(insn), size < 4 ? size : 4);
        b->encoding[i] = word;
    }
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &b->count, 1);
    pthread_mutex_lock(&lock);
    b->next = blocks;
    blocks = b;
    pthread_mutex_unlock(&lock);
}

static void write_counts(void)
{
    FILE *out = fopen(out_path, "w");
    if (!out) {
        qemu_plugin_outs("insncount: cannot open the output file\n");
        return;
    }
    for (struct block *b = blocks; b; b = b->next) {
        if (!b->count) {
            continue;
        }
        for (size_t i = 0; i < b->n; i++) {
            fprintf(out, "%" PRIx64 " %08" PRIx32 " %" PRIu64 "\n", b->vaddr + 4 * i,
                    b->encoding[i], b->count);
        }
    }
    fclose(out);
    written = 1;
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1,
                       uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6,
                       uint64_t a7, uint64_t a8)
{
    if (num != AARCH64_GETPRIORITY || a1 != 0) {
        return;
    }
    pthread_mutex_lock(&lock);
    if (a2 == MARK_START) {
        for (struct block *b = blocks; b; b = b->next) {
            b->count = 0;
        }
    } else if (a2 == MARK_STOP) {
        write_counts();
    }
    pthread_mutex_unlock(&lock);
}

static void on_plugin_exit(qemu_plugin_id_t id, void *data)
{
    if (!written) {
        qemu_plugin_outs("insncount: the guest never marked the end of a counting window\n");
    }
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            out_path = strdup(argv[i] + 4);
        }
    }
    if (!out_path || strcmp(info->target_name, "aarch64") != 0) {
        fprintf(stderr, "insncount: needs out=FILE, and an aarch64 guest\n");
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, on_plugin_exit, NULL);
    return 0;
}
