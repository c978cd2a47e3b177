// Forwarding header: the definitions are public API, in libclient/include/kvtier/status.h.
#pragma once
#include "kvtier/status.h"
