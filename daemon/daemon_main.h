// The whole of kvtierd behind main(): options, configuration, logging, the server.
#pragma once

#include "daemon/server.h"

namespace kvtier {

// Returns the process exit code (78 for a configuration error, as sysexits' EX_CONFIG).
int daemon_main(int argc, char** argv, ServerHooks hooks = {});

}  // namespace kvtier
