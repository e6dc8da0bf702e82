#include "blas.h"

#include <dlfcn.h>

#include <atomic>
#include <mutex>
#include <string>

namespace hashlab {
namespace {

typedef void (*set_threads_fn)(int);
typedef int (*get_threads_fn)();

std::atomic<sgemm_fn> g_sgemm{nullptr};
set_threads_fn g_set = nullptr;
get_threads_fn g_get = nullptr;
std::mutex g_mu;  // guards g_users and g_saved
int g_users = 0, g_saved = 1;

// The thread controls of the library that defines `fn`: scipy's wheels prefix OpenBLAS's
// symbols (scipy_openblas_*), other builds do not, ILP64 builds add a 64_ suffix.
bool find_thread_controls(void* fn) {
  Dl_info info;
  if (!dladdr(fn, &info) || !info.dli_fname) return false;
  void* lib = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD);
  if (!lib) return false;
  static const char* const prefixes[] = {"scipy_openblas_", "openblas_"};
  static const char* const suffixes[] = {"", "64_"};
  for (const char* p : prefixes)
    for (const char* s : suffixes) {
      const std::string set = std::string(p) + "set_num_threads" + s, get = std::string(p) + "get_num_threads" + s;
      auto fs = (set_threads_fn)dlsym(lib, set.c_str());
      auto fg = (get_threads_fn)dlsym(lib, get.c_str());
      if (fs && fg) {
        g_set = fs;
        g_get = fg;
        return true;  // the handle stays open: the library stays loaded while registered
      }
    }
  dlclose(lib);
  return false;
}

}  // namespace

bool register_sgemm(void* fn) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_sgemm.load()) return true;
  if (!fn || !find_thread_controls(fn)) return false;
  g_sgemm.store((sgemm_fn)fn);
  return true;
}

sgemm_fn registered_sgemm() { return g_sgemm.load(); }

BlasSingleThread::BlasSingleThread() {
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_users++ == 0 && g_get) {
    g_saved = g_get();
    if (g_saved != 1) g_set(1);
  }
}

BlasSingleThread::~BlasSingleThread() {
  std::lock_guard<std::mutex> lock(g_mu);
  if (--g_users == 0 && g_set && g_saved != 1) g_set(g_saved);
}

}  // namespace hashlab
