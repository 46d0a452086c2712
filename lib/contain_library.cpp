#include "embedded.hpp"

// libsafepy_contain.so, byte for byte (see lib/CMakeLists.txt).
asm(".section .rodata\n"
    ".balign 64\n"
    "safepy_contain_library_begin:\n"
    ".incbin \"" SAFEPY_CONTAIN_LIBRARY "\"\n"
    "safepy_contain_library_end:\n"
    ".previous\n");

extern "C" const char safepy_contain_library_begin[];
extern "C" const char safepy_contain_library_end[];

namespace safepy {

std::string_view embedded_contain_library() {
    return {safepy_contain_library_begin,
            static_cast<std::size_t>(safepy_contain_library_end - safepy_contain_library_begin)};
}

}  // namespace safepy
