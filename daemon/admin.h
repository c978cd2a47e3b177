// Admin and stats requests: one table maps each command to its handler and access rule.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "common/protocol_generated.h"
#include "daemon/peer.h"
#include "engine/json_text.h"

namespace kvtier {

class Server;
struct Reply;

void handle_admin(Server& server, const PeerInfo& peer, const wire::RequestMsg& msg, Reply& r);
bool is_admin(const Server& server, const PeerInfo& peer);

}  // namespace kvtier
