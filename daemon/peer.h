// Who is on the other end of a connection: SO_PEERCRED plus SO_PEERGROUPS.
#pragma once

#include "engine/peer.h"
#include "kvtier/status.h"

namespace kvtier {

Result<PeerInfo> peer_of(int sock);

}  // namespace kvtier
