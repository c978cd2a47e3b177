#include "tiers/remote/redis_cluster.h"
