// cxx_replaced.cpp -- a program that replaces some of the C++ allocation
// operators, run by tests/preload/run.sh plainly and with trimalloc
// preloaded; both runs must print the same.
//
// The standard lets a program replace any of them; the ones it does not
// replace must then call the ones it does ([new.delete]): a sized delete
// calls the plain delete, a nothrow new the throwing new, new[] calls new,
// the aligned sized delete calls the aligned delete. This one replaces the
// four unsized operators and the aligned pair, each putting a header
// before its blocks, as an allocation counter does. Until 2026-12-05
// trimalloc's own sized deletes (the ones g++ emits from C++14 on) and
// nothrow news served such a program directly, bypassing its replacements:
// free() got a pointer 16 bytes into a block, and aborted.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

static long news, deletes, aligned_news, aligned_deletes;
static const std::size_t HDR = 16;
static const std::uint32_t MAGIC = 0x7e57ab1e;

static void *hdr_alloc(std::size_t n) {
    char *raw = static_cast<char *>(std::malloc(n + HDR));
    if (!raw) throw std::bad_alloc();
    std::memcpy(raw, &MAGIC, sizeof MAGIC);
    news++;
    return raw + HDR;
}
static void hdr_free(void *p) {
    if (!p) return;
    char *raw = static_cast<char *>(p) - HDR;
    std::uint32_t m;
    std::memcpy(&m, raw, sizeof m);
    if (m != MAGIC) {
        std::printf("FAIL: a block not from the replacement reached its delete\n");
        std::exit(1);
    }
    deletes++;
    std::free(raw);
}

void *operator new(std::size_t n) { return hdr_alloc(n); }
void *operator new[](std::size_t n) { return hdr_alloc(n); }
void operator delete(void *p) noexcept { hdr_free(p); }
void operator delete[](void *p) noexcept { hdr_free(p); }

void *operator new(std::size_t n, std::align_val_t al) {
    std::size_t a = static_cast<std::size_t>(al);
    char *raw = static_cast<char *>(std::aligned_alloc(a, (n + 2 * a - 1) / a * a));
    if (!raw) throw std::bad_alloc();
    aligned_news++;
    return raw + a;
}
void operator delete(void *p, std::align_val_t al) noexcept {
    if (!p) return;
    aligned_deletes++;
    std::free(static_cast<char *>(p) - static_cast<std::size_t>(al));
}

struct Obj {
    int x[10];
};
struct WithDtor {
    int x[3];
    ~WithDtor() { x[0] = 0; }
};
struct alignas(64) Line {
    char c[64];
};

int main() {
    delete new Obj;                                   // sized delete
    delete[] new WithDtor[4];                         // sized delete[]
    delete new (std::nothrow) Obj;                    // nothrow new
    delete[] new (std::nothrow) int[4];               // nothrow new[]
    ::operator delete(::operator new(100), std::nothrow);
    ::operator delete[](::operator new[](100), std::nothrow);
    delete new Line;                                  // aligned sized delete
    delete[] new Line[3];                             // aligned new[] / delete[]
    delete new (std::nothrow) Line;                   // aligned nothrow new
    std::vector<std::string> v;
    for (int i = 0; i < 1000; i++) v.push_back(std::string(static_cast<std::size_t>(i % 97) + 20, 'x'));
    std::size_t total = 0;
    for (const std::string &s : v) total += s.size();
    v.clear();
    v.shrink_to_fit();
    std::printf("strings %zu bytes\n", total);
    std::printf("replacement new %s, every block back to its delete: %s\n",
                news > 1000 ? "used" : "NOT USED", news == deletes ? "yes" : "no");
    std::printf("aligned replacement new used %ld times, deletes %ld\n", aligned_news, aligned_deletes);
    return news == deletes && aligned_news == aligned_deletes && aligned_news == 3 ? 0 : 1;
}
