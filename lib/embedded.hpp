// Files built into the binary, so that `safepy run` needs no config files.
#pragma once

#include <string_view>

namespace safepy {

// lib/runner.py: the code that runs inside the jail.
std::string_view embedded_runner();

// lib/template.py: the warm template, appended to the runner.
std::string_view embedded_template();

// nsjail/safepy.cfg: the default nsjail policy.
std::string_view embedded_nsjail_config();

// lib/libsafepy_contain.so (built from lib/contain.cpp): the containment
// steps the warm template's children call.
std::string_view embedded_contain_library();

}  // namespace safepy
