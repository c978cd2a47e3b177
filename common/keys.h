// Forwarding header: the definitions are public API, in libclient/include/kvtier/keys.h.
#pragma once
#include "kvtier/keys.h"
