// Who is on the other end of a connection: SO_PEERCRED plus SO_PEERGROUPS.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "common/status.h"

namespace kvtier {

struct PeerInfo {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;  // supplementary groups, when the kernel reports them
  std::string comm;           // /proc/<pid>/comm, best effort
};

Result<PeerInfo> peer_of(int sock);

}  // namespace kvtier
