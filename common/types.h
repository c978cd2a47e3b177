// Forwarding header: the definitions are public API, in libclient/include/kvtier/types.h.
#pragma once
#include "kvtier/types.h"
